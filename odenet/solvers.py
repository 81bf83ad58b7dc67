"""Explicit Runge–Kutta schemes from Butcher tableaux, one generic step, a registry by name.

Fixed-step schemes live here; adaptive (error-controlled) solvers are delegated to torchdiffeq
and only named here so that every block can validate a solver name in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta scheme: ``k_i = F(t + c_i h, x + h sum_j a_ij k_j)``, ``x' = x + h sum_i b_i k_i``."""

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]  # row i holds a_i0 .. a_i(i-1); row 0 is empty
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self) -> None:
        stages = len(self.b)
        if len(self.c) != stages or len(self.a) != stages:
            raise ValueError(f"tableau {self.name!r}: a, b and c must all have {stages} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: explicit row {i} of a must have {i} entries")

    @property
    def stages(self) -> int:
        """Field evaluations per step."""
        return len(self.b)


SCHEMES: dict[str, ButcherTableau] = {}


def register_scheme(tableau: ButcherTableau) -> ButcherTableau:
    """Add a fixed-step scheme to the registry under ``tableau.name``."""
    SCHEMES[tableau.name] = tableau
    return tableau


register_scheme(ButcherTableau("euler", 1, a=((),), b=(1.0,), c=(0.0,)))
register_scheme(ButcherTableau("midpoint", 2, a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5)))
register_scheme(ButcherTableau("heun", 2, a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0)))
register_scheme(ButcherTableau("ralston", 2, a=((), (2 / 3,)), b=(0.25, 0.75), c=(0.0, 2 / 3)))
register_scheme(
    ButcherTableau("rk3", 3, a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), c=(0.0, 0.5, 1.0))
)
register_scheme(
    ButcherTableau(
        "rk4",
        4,
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
        c=(0.0, 0.5, 0.5, 1.0),
    )
)

# Error-controlled solvers, integrated by torchdiffeq (ODEBlock).
ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# torchdiffeq's own fixed-grid methods, usable in an ODEBlock with ``step_size``.
TORCHDIFFEQ_FIXED: tuple[str, ...] = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
)


def get_scheme(name: str) -> ButcherTableau:
    """The registered fixed-step scheme ``name``; a ValueError lists the valid names otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; scheme must be one of {sorted(SCHEMES)}") from None


def is_adaptive(name: str) -> bool:
    """True for the error-controlled solvers that ODEBlock hands to torchdiffeq."""
    return name in ADAPTIVE_SOLVERS


def all_solver_names() -> list[str]:
    """Every name accepted by ``with_solver``: fixed schemes, adaptive and torchdiffeq fixed-grid solvers."""
    return sorted(set(SCHEMES) | set(ADAPTIVE_SOLVERS) | set(TORCHDIFFEQ_FIXED))


def stage_times(tableau: ButcherTableau, t: Tensor, h: Tensor) -> Tensor:
    """Times ``t_k + c_i h_k`` of every stage of every step, shape ``(steps, stages)``."""
    c = torch.tensor(tableau.c, dtype=t.dtype, device=t.device)
    return t[:, None] + c * h[:, None]


def rk_step(
    field: Field,
    times: Sequence[Tensor],
    x: Tensor,
    h: float | Tensor,
    tableau: ButcherTableau,
) -> Tensor:
    """One explicit RK step from ``x`` with step ``h``; ``times`` are the stage times ``t + c_i h``.

    Zero tableau entries are skipped, so an Euler step costs exactly ``x + h F(t, x)``.
    """
    ks: list[Tensor] = []
    for i, row in enumerate(tableau.a):
        xi = x
        for j, a in enumerate(row):
            if a != 0.0:
                xi = _axpy(xi, h, a, ks[j])
        ks.append(field(times[i], xi))
    out = x
    for b, k in zip(tableau.b, ks):
        if b != 0.0:
            out = _axpy(out, h, b, k)
    return out


def _axpy(x: Tensor, h: float | Tensor, coef: float, k: Tensor) -> Tensor:
    """``x + (h * coef) * k`` in one fused op when ``h`` is a number."""
    if isinstance(h, Tensor):
        return x + (h * coef) * k
    return torch.add(x, k, alpha=h * coef)
