"""Integrator identity: which solver, at which steps, step size or tolerances, with or without the adjoint.

One small value type owns the question "which integrator is this" for blocks, the runner's build and
evaluation, step-size adaptation and the reports alike: whether it is fixed-step or adaptive, its step size
on a horizon ``T``, its label, and the ``with_solver`` options that rebuild it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .solvers import ADAPTIVE_SOLVERS

__all__ = ["Integrator", "fmt_h"]


def fmt_h(h: float | None) -> str:
    """A step size as ``1/8`` when it is the inverse of an integer, else ``%g`` (``""`` for None)."""
    if h is None:
        return ""
    if 0 < h < 1 and abs(1 / h - round(1 / h)) < 1e-6:
        return f"1/{round(1 / h)}"
    return f"{h:g}"


@dataclass(frozen=True)
class Integrator:
    """A solver name with exactly one way of placing its steps.

    - fixed steps: ``steps=N`` (a ``ResidualStack``, or torchdiffeq's grid with ``h = T / N``);
    - fixed step size: ``step_size=h`` (torchdiffeq's fixed grid, the last step shorter when ``T / h`` is no
      integer);
    - adaptive: ``rtol`` / ``atol`` (an error-controlled torchdiffeq solver).
    """

    name: str
    steps: int | None = None
    step_size: float | None = None
    rtol: float | None = None
    atol: float | None = None
    adjoint: bool = False

    @property
    def adaptive(self) -> bool:
        """An error-controlled solver (its steps are chosen while solving)."""
        return self.name in ADAPTIVE_SOLVERS

    @property
    def fixed(self) -> bool:
        return not self.adaptive

    def h(self, T: float) -> float | None:
        """The step size on ``[0, T]`` (None for an adaptive solver)."""
        if self.adaptive:
            return None
        if self.step_size is not None:
            return float(self.step_size)
        return T / self.steps if self.steps else None

    def steps_on(self, T: float) -> int | None:
        """The step count on ``[0, T]`` (None when adaptive, or when ``T / step_size`` is no integer)."""
        if self.adaptive:
            return None
        if self.steps is not None:
            return self.steps
        if self.step_size is None:
            return None
        n = T / self.step_size
        return round(n) if abs(n - round(n)) <= 1e-9 * max(n, 1.0) else None

    def label(self, T: float | None = None) -> str:
        """``euler N=8 (h=1/8)``, ``euler (h=0.3)`` or ``dopri5 rtol=1e-06``; ``+ adjoint`` when adjoint."""
        text = self.name
        if self.adaptive:
            if self.rtol is not None:
                text += f" rtol={self.rtol:g}"
        else:
            n = self.steps if T is None else self.steps_on(T)
            h = self.step_size if T is None else self.h(T)
            if n is not None:
                text += f" N={n}"
            if h is not None:
                text += f" (h={fmt_h(h)})"
        return text + (" + adjoint" if self.adjoint else "")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``make_block`` / ``with_solver`` that give this integrator."""
        if self.adaptive:
            out: dict[str, Any] = {}
            if self.rtol is not None:
                out["rtol"] = self.rtol
            if self.atol is not None:
                out["atol"] = self.atol
        elif self.step_size is not None:
            out = {"step_size": self.step_size}
        else:
            out = {"steps": self.steps}
        if self.adjoint:
            out["adjoint"] = True
        return out

    @classmethod
    def of(cls, block: Any) -> Integrator:
        """The integrator of a block (``ResidualStack`` or ``ODEBlock``)."""
        if hasattr(block, "steps") and hasattr(block, "scheme"):
            return cls(block.scheme, steps=int(block.steps))  # a plain net (no shortcut) reads as its euler grid
        if block.solver in ADAPTIVE_SOLVERS:
            return cls(block.solver, rtol=block.rtol, atol=block.atol, adjoint=block.adjoint)
        return cls(block.solver, step_size=float(block.step_size), adjoint=block.adjoint)

    @classmethod
    def from_record(cls, name: str | None, steps: Any = None, step_size: Any = None,
                    rtol: Any = None, atol: Any = None) -> Integrator | None:
        """An integrator from recorded fields (a report row, ``metrics.json``); None when ``name`` is missing."""
        if name is None:
            return None

        def num(v: Any) -> float | None:
            if v is None or v == "":
                return None
            f = float(v)
            return f if math.isfinite(f) else None

        n = num(steps)
        return cls(str(name), steps=int(n) if n is not None else None, step_size=num(step_size),
                   rtol=num(rtol), atol=num(atol))
