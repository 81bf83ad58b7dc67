"""``ODEBlock``: a field integrated on ``[0, T]`` by torchdiffeq (``odeint``, or ``odeint_adjoint``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, final

import torch
import torchdiffeq
from torch import Tensor, nn

from ._args import ArgumentTypeError, check_flag, check_int, check_number
from .block_base import (
    BLOCK_CLASSES,
    Block,
    FieldFn,
    SolverError,
    check_field,
    check_solver_name,
    check_state,
    check_T,
    make_block,
    mark_field_error,
    raised_by_field,
    shape_error,
    wants_stack,
)
from .solvers import ADAPTIVE_SOLVERS, SCHEMES, TORCHDIFFEQ_FIXED

__all__ = ["ODEBlock", "TOLERANCE_SOLVERS"]

#: The methods whose ``rtol``/``atol`` matter: the adaptive ones and implicit Adams (its corrector iterations).
TOLERANCE_SOLVERS: tuple[str, ...] = (*ADAPTIVE_SOLVERS, "implicit_adams")
#: Options only adaptive methods use.
_ADAPTIVE_ONLY = ("max_steps", "min_step", "max_step")


class _CountingField:
    """Wraps a field for torchdiffeq: counts evaluations (forward and backward apart) and steps.

    Checks the output shape at every evaluation and marks an exception raised by the field (see
    ``raised_by_field``), so that it reaches the caller unchanged and is not taken for a solver failure.
    """

    def __init__(self, field: FieldFn) -> None:
        self.field = field
        self.forward_calls = 0
        self.backward_calls = 0
        self.in_backward = False

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        try:
            out = self.field(t, x)
        except Exception as err:
            mark_field_error(err)
            raise
        if out.shape != x.shape:
            raise shape_error(out, x)
        if self.in_backward:
            self.backward_calls += 1
        else:
            self.forward_calls += 1
        return out


class _AdaptiveCountingField(_CountingField):
    """Also records accepted and rejected steps through torchdiffeq's step callbacks."""

    def __init__(self, field: FieldFn, t_end: Tensor | None = None) -> None:
        super().__init__(field)
        self.t_end = t_end  # the last output time: torchdiffeq's last step may pass it (and interpolate)
        self.accepted: list[Tensor] = []
        self.rejected = 0
        self.accepted_backward = 0  # steps of the adjoint solve (odeint_adjoint's backward pass)
        self.rejected_backward = 0

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted.append(dt.detach())

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1

    def callback_accept_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted_backward += 1

    def callback_reject_step_adjoint(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected_backward += 1


def _state_rms_norm(z: Tensor, channels: int) -> Tensor:
    """torchdiffeq's RMS error norm over the state columns of an augmented ``[x, penalties]`` state."""
    return z[..., :-channels].pow(2).mean().sqrt()


def _applies(option: str, solver: str, regularizers: Any) -> bool:
    """Whether ``option`` means something to ``solver`` (what ``with_solver`` may carry over)."""
    if option in ("rtol", "atol"):
        return solver in TOLERANCE_SOLVERS
    if option in _ADAPTIVE_ONLY:
        return solver in ADAPTIVE_SOLVERS
    if option == "penalty_error_control":
        return solver in ADAPTIVE_SOLVERS and bool(regularizers)
    return option != "step_size"


@final
class ODEBlock(Block):
    """Integrates ``field`` on ``[0, T]`` with torchdiffeq (``odeint``, or ``odeint_adjoint``).

    ``solver`` is an adaptive method (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``,
    ``adaptive_heun``) controlled by ``rtol``/``atol`` (default ``1e-3``/``1e-4``), ``max_steps``
    (default 10,000) and the step-size limits ``min_step``/``max_step`` (default none); or a torchdiffeq
    fixed-grid method (``euler``, ``rk4``, ...) with ``step_size``. An option the chosen method would ignore
    is refused: ``step_size`` with an adaptive method; ``rtol``/``atol`` (but with ``implicit_adams``),
    ``max_steps``, ``min_step`` or ``max_step`` with a fixed grid. ``nfe`` counts every field evaluation of
    the last forward, ``nfe_backward`` those of the adjoint solve that followed it; ``stats`` adds accepted
    and rejected steps of both. ``regularizers`` (``kinetic``, ``jacobian``) are integrated alongside the
    state while training (see ``Block.regularization``); with ``penalty_error_control=False`` (adaptive
    methods with regularizers only) an adaptive solver's error norm covers the state alone, so the penalty
    channels ride on the steps the state needs.

    Only torchdiffeq's own failures become a ``SolverError``; an exception raised by the field reaches the
    caller unchanged. The initial state must be finite; an empty batch returns at once (``nfe`` 0).
    """

    #: The values of the options left out.
    DEFAULTS: dict[str, Any] = {
        "rtol": 1e-3, "atol": 1e-4, "max_steps": 10_000, "min_step": 0.0, "max_step": math.inf,
        "penalty_error_control": True,
    }

    def __init__(
        self,
        field: nn.Module,
        T: float = 1.0,
        solver: str = "dopri5",
        rtol: float | None = None,
        atol: float | None = None,
        adjoint: bool = False,
        step_size: float | None = None,
        max_steps: int | None = None,
        min_step: float | None = None,
        max_step: float | None = None,
        regularizers: Sequence[str] = (),
        noise: str = "gaussian",
        penalty_error_control: bool | None = None,
    ) -> None:
        super().__init__()
        self.T = check_T(T)
        check_field(field, self.T)
        self._init_regularizers(regularizers, noise)
        check_solver_name(solver)
        if solver not in ADAPTIVE_SOLVERS and solver not in TORCHDIFFEQ_FIXED:
            raise ValueError(
                f"unknown solver {solver!r}; solver must be one of {sorted(ADAPTIVE_SOLVERS + TORCHDIFFEQ_FIXED)} "
                f"(ODEBlock) or a fixed scheme of ResidualStack {sorted(SCHEMES)}"
            )
        adaptive = solver in ADAPTIVE_SOLVERS
        for name, value in (("rtol", rtol), ("atol", atol), ("step_size", step_size)):
            if value is not None:
                check_number(name, value, low=0.0, low_open=True)
        if max_steps is not None:
            check_int("max_steps", max_steps, low=1)
        if min_step is not None:
            check_number("min_step", min_step, low=0.0)
        if max_step is not None:
            check_number("max_step", max_step, low=0.0, low_open=True, allow_inf=True)
        check_flag("adjoint", adjoint)
        if penalty_error_control is not None:
            check_flag("penalty_error_control", penalty_error_control)
        given = {"rtol": rtol, "atol": atol, "max_steps": max_steps, "min_step": min_step, "max_step": max_step}
        ignored = [k for k, v in given.items() if v is not None and not _applies(k, solver, True)]
        if adaptive and step_size is not None:
            raise ValueError(
                f"step_size is for torchdiffeq's fixed-grid methods {list(TORCHDIFFEQ_FIXED)}: the adaptive "
                f"solver {solver!r} chooses its own steps (bound them with min_step/max_step)"
            )
        if not adaptive and step_size is None:
            raise ValueError(f"solver {solver!r} is fixed-grid: give step_size=h, or use ResidualStack(field, steps=N)")
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} would be ignored by the fixed-grid method {solver!r} (step_size=h): "
                f"drop {'it' if len(ignored) == 1 else 'them'}, or use an adaptive solver {list(ADAPTIVE_SOLVERS)}"
            )
        if penalty_error_control is False and not adaptive:
            raise ValueError(
                f"penalty_error_control=False applies to adaptive solvers only; {solver!r} on a fixed grid "
                "controls no error"
            )
        if penalty_error_control is False and not self.regularizers:
            raise ValueError("penalty_error_control=False needs regularizers: without penalties it changes nothing")
        self.field = field
        self.solver = solver
        self.adjoint = adjoint
        self.rtol = float(rtol if rtol is not None else self.DEFAULTS["rtol"])
        self.atol = float(atol if atol is not None else self.DEFAULTS["atol"])
        self.step_size = float(step_size) if step_size is not None else None
        self.max_steps = int(max_steps if max_steps is not None else self.DEFAULTS["max_steps"])
        self.min_step = float(min_step if min_step is not None else self.DEFAULTS["min_step"])
        self.max_step = float(max_step if max_step is not None else self.DEFAULTS["max_step"])
        self.penalty_error_control = penalty_error_control is not False
        if not self.min_step < self.max_step:
            raise ValueError(f"min_step must be below max_step={self.max_step:g}, got {self.min_step:g}")
        self._counter: _CountingField = _CountingField(field)

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    @property
    def options(self) -> dict[str, Any]:
        """The constructor arguments besides field and T that apply to this solver (``ODEBlock(field, T,
        **options)`` rebuilds it): tolerances and step limits when adaptive, ``step_size`` when fixed-grid."""
        out: dict[str, Any] = {"solver": self.solver}
        if self.solver in TOLERANCE_SOLVERS:
            out.update(rtol=self.rtol, atol=self.atol)
        out["adjoint"] = self.adjoint
        if self.adaptive:
            out.update(max_steps=self.max_steps, min_step=self.min_step, max_step=self.max_step)
        else:
            out["step_size"] = self.step_size
        out.update(regularizers=self.regularizers, noise=self.noise)
        if self.adaptive:
            out["penalty_error_control"] = self.penalty_error_control
        return out

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None and v != ()}
        return f"T={self.T}, " + ", ".join(f"{k}={v}" for k, v in shown.items())

    @property
    def nfe(self) -> int:
        return self._counter.forward_calls

    @property
    def nfe_backward(self) -> int:
        return self._counter.backward_calls

    @property
    def step_sizes(self) -> Tensor:
        """Accepted step sizes of the last adaptive forward, in order (empty for fixed-grid methods).

        torchdiffeq's last step may end past the final time (the output there is interpolated); it is
        clipped at that time, so the step sizes partition ``[0, T]`` (``[0, times[-1]]``) and sum to it.
        """
        counter = self._counter
        if not isinstance(counter, _AdaptiveCountingField) or not counter.accepted:
            return torch.zeros(0)
        h = torch.stack(counter.accepted).cpu()
        if counter.t_end is not None:
            h[-1] = torch.minimum(h[-1], counter.t_end.detach().cpu() - h[:-1].sum())
        return h

    @property
    def stats(self) -> dict[str, int]:
        stats = {"nfe": self.nfe, "nfe_backward": self.nfe_backward}
        counter = self._counter
        if isinstance(counter, _AdaptiveCountingField):
            stats["steps_accepted"] = len(counter.accepted)
            stats["steps_rejected"] = counter.rejected
            if self.adjoint:
                stats["steps_accepted_backward"] = counter.accepted_backward
                stats["steps_rejected_backward"] = counter.rejected_backward
        elif self.step_size is not None:
            stats["steps"] = math.ceil(self.T / self.step_size - 1e-9)  # torchdiffeq's grid, last step shorter
        return stats

    def _torchdiffeq_options(self) -> dict[str, Any]:
        if not self.adaptive:
            return {"step_size": self.step_size}
        options: dict[str, Any] = {"max_num_steps": self.max_steps}
        if self.min_step > 0:
            options["min_step"] = self.min_step
        if math.isfinite(self.max_step):
            options["max_step"] = self.max_step
        return options

    def _solve(self, x: Tensor, times: Tensor, regularize: bool = False) -> Tensor:
        dynamics = self._dynamics() if regularize else None
        if x.numel() == 0:  # nothing to integrate (torchdiffeq's error norm of an empty state is NaN)
            self._counter = _AdaptiveCountingField(self.field, times[-1]) if self.adaptive else _CountingField(
                self.field)
            self._counter.in_backward = True
            self._record_regularization({k: x.new_zeros(x.shape[:1]) for k in dynamics.regularizers}
                                        if dynamics is not None else None)
            return x.unsqueeze(0).expand(len(times), *x.shape).clone()
        field: FieldFn = self.field
        if dynamics is not None:
            x, field = dynamics.augment(x), dynamics
        counter = _AdaptiveCountingField(field, times[-1]) if self.adaptive else _CountingField(field)
        self._counter = counter
        options = self._torchdiffeq_options()
        if dynamics is not None and self.adaptive and not self.penalty_error_control:
            options["norm"] = partial(_state_rms_norm, channels=len(dynamics.regularizers))
        kwargs: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.solver, options=options)
        try:
            if self.adjoint:
                params = tuple(p for p in self.field.parameters() if p.requires_grad)
                out = torchdiffeq.odeint_adjoint(counter, x, times, adjoint_params=params, **kwargs)
            else:
                out = torchdiffeq.odeint(counter, x, times, **kwargs)
        except AssertionError as err:
            if raised_by_field(err):
                raise
            raise self.solver_error(str(err)) from err
        counter.in_backward = True
        integrals = None
        if dynamics is not None:
            out, integrals = dynamics.split(out)
            integrals = {k: v[-1] for k, v in integrals.items()}
        self._record_regularization(integrals)
        return out

    def solver_error(self, reason: str) -> SolverError:
        """A ``SolverError`` for torchdiffeq's failure ``reason``, naming the setting to change."""
        if "max_num_steps" in reason:
            return SolverError(
                f"{self.solver} needed more than max_steps={self.max_steps} steps: "
                f"raise max_steps or loosen rtol={self.rtol:g}/atol={self.atol:g}"
            )
        if "underflow" in reason:
            return SolverError(
                f"{self.solver} step size underflowed ({reason}): loosen rtol={self.rtol:g}/atol={self.atol:g} "
                "or regularise the field (it is likely stiff or blowing up)"
            )
        if "non-finite" in reason:
            return SolverError(f"{self.solver} produced a non-finite state: the field blew up; lower the learning rate")
        return SolverError(f"{self.solver} failed: {reason}")

    def forward(self, x: Tensor) -> Tensor:
        """The state at ``T``."""
        check_state(x)
        times = torch.tensor([0.0, self.T], dtype=x.dtype, device=x.device)
        return self._solve(x, times, regularize=True)[-1]

    def trajectory(self, x: Tensor, times: Tensor | Sequence[float] | int = 32) -> Tensor:
        """States at ``times`` (starting at 0; an int ``n`` means ``n`` equal intervals of ``[0, T]``).

        Returns shape ``(len(times), *x.shape)``.
        """
        check_state(x)
        if isinstance(times, bool):
            raise ArgumentTypeError(f"times must be an int (intervals) or a sequence of times, got {times!r}")
        if isinstance(times, int):
            if times < 1:
                raise ValueError(f"times must be >= 1 intervals, got {times}")
            grid = torch.linspace(0.0, self.T, times + 1, dtype=x.dtype, device=x.device)
        else:
            grid = torch.as_tensor(times, dtype=x.dtype, device=x.device)
            if grid.ndim != 1 or len(grid) < 2 or grid[0] != 0 or not bool((grid[1:] > grid[:-1]).all()):
                raise ValueError("times must be a 1-D increasing sequence starting at 0 (the initial state's time)")
        return self._solve(x, grid)

    def with_solver(self, solver: str, **options: Any) -> Block:
        """A new block on the same field; this block's options that apply to ``solver`` are carried over
        (tolerances to an adaptive method, ``adjoint``, the regularizers), those that do not are dropped."""
        check_solver_name(solver)
        if wants_stack(solver, options):
            return make_block(self.field, solver, T=self.T, **options)
        regularizers = options.get("regularizers", self.regularizers)
        carried = {
            k: v for k, v in self.options.items()
            if k != "solver" and k not in options and _applies(k, solver, regularizers)
        }
        return make_block(self.field, solver, T=self.T, **carried, **options)


BLOCK_CLASSES["ode"] = ODEBlock
