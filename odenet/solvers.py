"""Explicit Runge–Kutta schemes from Butcher tableaux, one generic step, a registry by name.

Fixed-step schemes live here; adaptive (error-controlled) solvers are delegated to torchdiffeq
and only named here so that every block can validate a solver name in one place.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._args import ArgumentTypeError, check_int

Field = Callable[[Tensor, Tensor], Tensor]


# Error-controlled solvers, integrated by torchdiffeq (ODEBlock).
ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# torchdiffeq's own fixed-grid methods, usable in an ODEBlock with ``step_size``.
TORCHDIFFEQ_FIXED: tuple[str, ...] = (
    "euler", "midpoint", "heun2", "heun3", "rk4", "rk4_38", "explicit_adams", "implicit_adams",
)
# ``rk4`` is the classical Runge–Kutta method in a ResidualStack and on torchdiffeq's grid alike (torchdiffeq's
# own ``rk4`` is Kutta's 3/8 rule: odenet calls it ``rk4_38``, here and as a tableau; see ``odenet._torchdiffeq``).


#: Tolerance of the consistency (``sum b = 1``) and row-sum (``c_i = sum_j a_ij``) conditions of a tableau.
TABLEAU_TOL = 1e-12


def _coefficients(tableau: str, name: str, values: Any) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats; a ValueError (or ArgumentTypeError) naming the tableau's field."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArgumentTypeError(f"tableau {tableau!r}: {name} must be a sequence of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ArgumentTypeError(f"tableau {tableau!r}: {name} must hold numbers, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"tableau {tableau!r}: {name} must hold finite numbers, got {v!r}")
        out.append(float(v))
    return tuple(out)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta scheme: ``k_i = F(t + c_i h, x + h sum_j a_ij k_j)``, ``x' = x + h sum_i b_i k_i``.

    Checked when made: a non-empty ``name``, an integer ``order >= 1``, finite entries, an explicit
    (strictly lower-triangular) ``a``, ``sum_i b_i = 1`` (consistency) and ``c_i = sum_j a_ij`` (the
    row-sum condition) within ``1e-12``, and every ``c_i`` in ``[0, 1]``. Entries are stored as tuples of
    floats.
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]  # row i holds a_i0 .. a_i(i-1); row 0 is empty
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a tableau's name must be a non-empty string, got {self.name!r}")
        name = self.name
        check_int(f"tableau {name!r}: order", self.order, low=1)
        b = _coefficients(name, "b", self.b)
        c = _coefficients(name, "c", self.c)
        if isinstance(self.a, (str, bytes)) or not isinstance(self.a, Sequence):
            raise ArgumentTypeError(f"tableau {name!r}: a must be a sequence of rows, got {self.a!r}")
        a = tuple(_coefficients(name, f"row {i} of a", row) for i, row in enumerate(self.a))
        stages = len(b)
        if stages < 1 or len(c) != stages or len(a) != stages:
            raise ValueError(
                f"tableau {name!r}: a, b and c must all have the same number of stages >= 1 "
                f"(got {len(a)}, {stages}, {len(c)})"
            )
        for i, row in enumerate(a):
            if len(row) != i:
                raise ValueError(f"tableau {name!r}: explicit row {i} of a must have {i} entries")
        if abs(math.fsum(b) - 1.0) > TABLEAU_TOL:
            raise ValueError(f"tableau {name!r}: the weights b must sum to 1 (consistency), got sum {math.fsum(b)!r}")
        for i, (row, ci) in enumerate(zip(a, c)):
            if abs(math.fsum(row) - ci) > TABLEAU_TOL:
                raise ValueError(
                    f"tableau {name!r}: c[{i}]={ci!r} must equal the sum of row {i} of a ({math.fsum(row)!r}), "
                    "the row-sum condition"
                )
            if not 0.0 <= ci <= 1.0:
                raise ValueError(f"tableau {name!r}: c[{i}]={ci!r} must lie in [0, 1] (a stage time within the step)")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "order", int(self.order))

    @property
    def stages(self) -> int:
        """Field evaluations per step."""
        return len(self.b)


SCHEMES: dict[str, ButcherTableau] = {}


def register_scheme(tableau: ButcherTableau) -> ButcherTableau:
    """Add a fixed-step scheme to the registry under ``tableau.name``.

    Re-registering an equal tableau is a no-op; a different tableau under a registered name, or a name of
    an adaptive solver (which ``make_block`` would then route to a stack), is refused.
    """
    if not isinstance(tableau, ButcherTableau):
        raise TypeError(f"tableau must be a ButcherTableau, got {type(tableau).__name__}")
    name = tableau.name
    if name in ADAPTIVE_SOLVERS:
        raise ValueError(f"scheme name {name!r} is an adaptive torchdiffeq solver's; give the tableau another name")
    existing = SCHEMES.get(name)
    if existing is not None and existing != tableau:
        raise ValueError(
            f"a different scheme {name!r} is already registered; give the tableau another name "
            "(re-registering an equal tableau is allowed)"
        )
    if existing is None:
        SCHEMES[name] = tableau
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
# Kutta's 3/8 rule: torchdiffeq's ``rk4`` (``rk4_alt_step_func``), the same method in a ResidualStack.
register_scheme(
    ButcherTableau(
        "rk4_38",
        4,
        a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
        c=(0.0, 1 / 3, 2 / 3, 1.0),
    )
)


def get_scheme(name: str) -> ButcherTableau:
    """The registered fixed-step scheme ``name``; a ValueError lists the valid names otherwise."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"scheme must be a name among {sorted(SCHEMES)}, got {name!r} ({type(name).__name__})")
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
        ks.append(field(times[i], combine(x, ks, row, h)))
    return combine(x, ks, tableau.b, h)


def combine(x: Tensor, ks: Sequence[Tensor], weights: Sequence[float], h: float | Tensor) -> Tensor:
    """``x + h sum_i w_i k_i``, one op per nonzero weight (zero weights skipped): a Runge–Kutta stage or step."""
    for w, k in zip(weights, ks):
        if w != 0.0:
            x = _axpy(x, h, w, k)
    return x


def _axpy(x: Tensor, h: float | Tensor, coef: float, k: Tensor) -> Tensor:
    """``x + (h * coef) * k`` in one fused op when ``h`` is a number."""
    if isinstance(h, Tensor):
        return x + (h * coef) * k
    return torch.add(x, k, alpha=h * coef)
