"""The bridge to torchdiffeq: what each odenet method name means there, and which options it takes.

One name, one method. odenet's ``rk4`` is the classical Runge–Kutta method everywhere: in a
``ResidualStack`` (its Butcher tableau) and on torchdiffeq's fixed grid. torchdiffeq's own ``rk4`` is
Kutta's 3/8 rule (``torchdiffeq._impl.fixed_grid.RK4`` steps with ``rk4_alt_step_func``; the classical
``rk4_step_func`` in ``rk_common`` is used by no registered method), so odenet registers a classical-RK4
fixed-grid solver with torchdiffeq under its own key (:data:`CLASSICAL_RK4`; torchdiffeq's ``rk4`` is left
as it is) and calls torchdiffeq's 3/8 rule ``rk4_38``, the name of the same tableau in a ``ResidualStack``.
Registering the solver with torchdiffeq (rather than stepping it here) keeps everything torchdiffeq does
on a fixed grid for it: the adjoint, events, ``perturb``, ``interp``.

``options`` are torchdiffeq's per-method options; each method takes those its solver class reads (checked
against torchdiffeq's solver signatures by the tests). The options an ``ODEBlock`` has its own argument for
(``step_size``, ``max_steps``, ``min_step``, ``max_step``) are refused in ``options``, naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchdiffeq  # noqa: F401  (the package: its solvers below live in torchdiffeq._impl)
from torch import Tensor
from torchdiffeq._impl.fixed_grid import RK4 as _TorchdiffeqRK4
from torchdiffeq._impl.misc import Perturb
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.rk_common import rk4_step_func

from ._args import ArgumentTypeError, check_flag, check_int, check_number
from .block_base import FieldFn, State, call_field
from .solvers import ADAPTIVE_SOLVERS, TORCHDIFFEQ_FIXED

__all__ = [
    "CLASSICAL_RK4",
    "AdaptiveCountingField",
    "AdjointAdaptiveCountingField",
    "CountingField",
    "OWN_OPTIONS",
    "check_adjoint_options",
    "check_adjoint_params",
    "check_options",
    "method_options",
    "torchdiffeq_method",
]

#: torchdiffeq's key of odenet's classical RK4 on a fixed grid.
CLASSICAL_RK4 = "odenet_rk4_classical"


class ClassicalRK4(_TorchdiffeqRK4):
    """The classical RK4 step (weights 1/6, 1/3, 1/3, 1/6) on torchdiffeq's fixed grid."""

    order = 4

    def _step_func(self, func, t0, dt, t1, y0):  # type: ignore[no-untyped-def]
        f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
        return rk4_step_func(func, t0, dt, t1, y0, f0=f0, perturb=self.perturb), f0


if _TORCHDIFFEQ_SOLVERS.get(CLASSICAL_RK4, ClassicalRK4) is not ClassicalRK4:  # pragma: no cover
    raise RuntimeError(f"torchdiffeq already holds a different solver under {CLASSICAL_RK4!r}")
_TORCHDIFFEQ_SOLVERS[CLASSICAL_RK4] = ClassicalRK4

#: odenet's method names whose torchdiffeq key differs; every other name is torchdiffeq's own.
_RENAMED = {"rk4": CLASSICAL_RK4, "rk4_38": "rk4"}


def torchdiffeq_method(solver: str) -> str:
    """torchdiffeq's key for the odenet method ``solver`` (``rk4``: classical; ``rk4_38``: torchdiffeq's ``rk4``)."""
    return _RENAMED.get(solver, solver)


#: Options an ODEBlock sets through its own arguments: torchdiffeq's key -> the ODEBlock argument.
OWN_OPTIONS = {"step_size": "step_size", "max_num_steps": "max_steps", "min_step": "min_step",
               "max_step": "max_step", "grid_constructor": "step_size"}

_ADAPTIVE = ("first_step", "step_t", "jump_t", "safety", "ifactor", "dfactor", "norm", "dtype")
_FIXED = ("interp", "perturb")
_ADAMS = (*_FIXED, "max_order")


def method_options(solver: str) -> tuple[str, ...]:
    """The torchdiffeq options (``options=``) the method ``solver`` reads, besides those ``OWN_OPTIONS`` maps."""
    if solver in ADAPTIVE_SOLVERS:
        return _ADAPTIVE
    if solver == "implicit_adams":
        return (*_ADAMS, "max_iters")  # the corrector's iterations; explicit Adams has none
    if solver == "explicit_adams":
        return _ADAMS
    if solver in TORCHDIFFEQ_FIXED:
        return _FIXED
    raise ValueError(f"unknown torchdiffeq method {solver!r}")


def _check_value(where: str, key: str, v: Any, adjoint: bool) -> Any:
    """The value of option ``key`` checked (``where``: ``options`` or ``adjoint_options``, for the message)."""
    name = f"{where}[{key!r}]"
    if key in ("first_step", "safety", "ifactor", "dfactor", "step_size"):
        return check_number(name, v, low=0.0, low_open=True)
    if key in ("step_t", "jump_t"):
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)
        if t.ndim != 1 or not torch.is_floating_point(t) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be a 1-D sequence of finite times, got {v!r}")
        return t  # a tensor: torchdiffeq negates it on a decreasing time grid
    if key == "norm":
        if callable(v) or (adjoint and v == "seminorm"):
            return v
        kinds = "a callable or 'seminorm'" if adjoint else "a callable (tensor -> scalar)"
        raise ArgumentTypeError(f"{name} must be {kinds}, got {v!r}")
    if key == "dtype":
        if not isinstance(v, torch.dtype) or not v.is_floating_point:
            raise ArgumentTypeError(f"{name} (the dtype of times) must be a floating torch.dtype, got {v!r}")
        return v
    if key == "interp":
        if v not in ("linear", "cubic"):
            raise ValueError(f"{name} must be 'linear' or 'cubic', got {v!r}")
        return v
    if key == "perturb":
        return check_flag(name, v)
    if key == "max_order":
        n = check_int(name, v, low=1)
        if n > 12:
            raise ValueError(f"{name} must be at most 12 (torchdiffeq's Adams methods), got {n}")
        return n
    if key in ("max_iters", "max_num_steps"):
        return check_int(name, v, low=1)
    if key == "min_step":
        return check_number(name, v, low=0.0)
    if key == "max_step":
        return check_number(name, v, low=0.0, low_open=True, allow_inf=True)
    raise ValueError(f"unknown option {name}")  # pragma: no cover (keys are checked first)


def _check_mapping(name: str, options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise ArgumentTypeError(f"{name} must be a dict of torchdiffeq options, got {type(options).__name__}")
    bad = [k for k in options if not isinstance(k, str)]
    if bad:
        raise ArgumentTypeError(f"{name} keys must be option names (str), got {bad!r}")
    return dict(options)


def check_options(solver: str, options: Any) -> dict[str, Any]:
    """``options`` for the method ``solver``, checked: every key one it reads, every value of its type.

    An option an ODEBlock has its own argument for is refused naming the argument; an unknown one, naming
    it and the options ``solver`` takes.
    """
    out = _check_mapping("options", options)
    own = sorted(k for k in out if k in OWN_OPTIONS)
    if own:
        raise ValueError(
            f"options {own} are set through ODEBlock's own arguments: use "
            f"{', '.join(sorted({OWN_OPTIONS[k] + '=' for k in own}))} instead"
        )
    allowed = method_options(solver)
    unknown = sorted(k for k in out if k not in allowed)
    if unknown:
        raise ValueError(f"unknown options {unknown} for solver {solver!r}; it takes {sorted(allowed)}")
    return {k: _check_value("options", k, v, adjoint=False) for k, v in out.items()}


def check_adjoint_params(params: Any) -> tuple[Tensor, ...]:
    """``adjoint_params`` as a tuple of tensors (``odeint_adjoint`` returns gradients for these)."""
    if isinstance(params, Tensor) or not hasattr(params, "__iter__"):
        raise ArgumentTypeError(
            f"adjoint_params must be a sequence of tensors (e.g. (*field.parameters(), w)), got {type(params).__name__}"
        )
    out = tuple(params)
    bad = [type(p).__name__ for p in out if not isinstance(p, Tensor)]
    if bad:
        raise ArgumentTypeError(f"adjoint_params must hold tensors only, got {bad}")
    return out


def check_adjoint_options(method: str, options: Any) -> dict[str, Any]:
    """``adjoint_options`` for the adjoint method ``method``: its options plus torchdiffeq's own keys for the
    step placement (``step_size`` on a fixed grid; ``max_num_steps``, ``min_step``, ``max_step`` adaptive),
    and ``norm="seminorm"`` (adaptive)."""
    out = _check_mapping("adjoint_options", options)
    native = ("max_num_steps", "min_step", "max_step") if method in ADAPTIVE_SOLVERS else ("step_size",)
    allowed = (*method_options(method), *native)
    unknown = sorted(k for k in out if k not in allowed)
    if unknown:
        raise ValueError(
            f"unknown adjoint_options {unknown} for adjoint_method {method!r}; it takes {sorted(allowed)}"
        )
    return {k: _check_value("adjoint_options", k, v, adjoint=True) for k, v in out.items()}


class CountingField:
    """Wraps a field for torchdiffeq: counts evaluations (forward and backward apart) and steps.

    Checks the output shape at every evaluation (per tensor of a tuple state) and marks an exception raised
    by the field (see ``raised_by_field``), so that it reaches the caller unchanged and is not taken for a
    solver failure. ``span`` is the length of the interval solved over (``|times[-1] - times[0]|``).
    """

    def __init__(self, field: FieldFn, span: Tensor | None = None) -> None:
        self.field = field
        self.span = span
        self.forward_calls = 0
        self.backward_calls = 0
        self.in_backward = False

    def __call__(self, t: Tensor, x: State) -> State:
        out = call_field(self.field, t, x)
        if self.in_backward:
            self.backward_calls += 1
        else:
            self.forward_calls += 1
        return out


class AdaptiveCountingField(CountingField):
    """Also records accepted and rejected steps through torchdiffeq's step callbacks."""

    def __init__(self, field: FieldFn, span: Tensor | None = None) -> None:
        super().__init__(field, span)
        self.accepted: list[Tensor] = []
        self.rejected = 0
        self.accepted_backward = 0  # steps of the adjoint solve (odeint_adjoint's backward pass)
        self.rejected_backward = 0

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted.append(dt.detach())

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1


class AdjointAdaptiveCountingField(AdaptiveCountingField):
    """Also counts the steps of an adaptive adjoint solve (torchdiffeq warns of these callbacks on a fixed grid)."""

    def callback_accept_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted_backward += 1

    def callback_reject_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected_backward += 1
