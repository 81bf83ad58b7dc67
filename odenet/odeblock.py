"""``ODEBlock``: a field integrated by torchdiffeq (``odeint``, ``odeint_adjoint``, ``odeint_event``) or odenet."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, final

import torch
import torchdiffeq
from torch import Tensor, nn

from . import adaptive
from ._args import ArgumentTypeError, check_flag, check_int, check_number
from ._torchdiffeq import (
    AdaptiveCountingField,
    AdjointAdaptiveCountingField,
    CountingField,
    check_adjoint_options,
    check_adjoint_params,
    check_options,
    method_options,
    torchdiffeq_method,
)
from .adaptive import check_backend
from .block_base import (
    BLOCK_CLASSES,
    Block,
    FieldFn,
    SolverError,
    State,
    check_field,
    check_solver_name,
    check_state,
    check_T,
    make_block,
    mark_field_error,
    numel,
    raised_by_field,
    state_device,
    state_dtype,
    wants_stack,
)
from .solvers import ADAPTIVE_SOLVERS, SCHEMES, TORCHDIFFEQ_FIXED

__all__ = ["ODEBlock", "TOLERANCE_SOLVERS"]

#: The methods whose ``rtol``/``atol`` matter: the adaptive ones and implicit Adams (its corrector iterations).
TOLERANCE_SOLVERS: tuple[str, ...] = (*ADAPTIVE_SOLVERS, "implicit_adams")
#: Options only adaptive methods use.
_ADAPTIVE_ONLY = ("max_steps", "min_step", "max_step")
#: The arguments of the adjoint solve, each refused unless ``adjoint=True``.
_ADJOINT_ARGS = ("adjoint_params", "adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options")


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
    if option == "backend":
        return solver in adaptive.EMBEDDED_PAIRS
    return option != "step_size"


def _check_method(name: str, solver: Any) -> str:
    if name == "solver":
        check_solver_name(solver)
    elif not isinstance(solver, str):
        raise ArgumentTypeError(f"{name} must be a torchdiffeq method name, got {solver!r} ({type(solver).__name__})")
    if solver not in ADAPTIVE_SOLVERS and solver not in TORCHDIFFEQ_FIXED:
        raise ValueError(
            f"unknown {name} {solver!r}; {name} must be one of {sorted(ADAPTIVE_SOLVERS + TORCHDIFFEQ_FIXED)} "
            f"(ODEBlock) or a fixed scheme of ResidualStack {sorted(SCHEMES)}"
        )
    return solver


@final
class ODEBlock(Block):
    """Integrates ``field`` on ``[0, T]`` with torchdiffeq (``odeint``, or ``odeint_adjoint``).

    ``solver`` is an adaptive method (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``)
    controlled by ``rtol``/``atol``, ``max_steps`` (default 10,000) and the step-size limits
    ``min_step``/``max_step`` (default none); or a torchdiffeq fixed-grid method (``euler``, ``midpoint``,
    ``heun2``, ``heun3``, ``rk4``, ``rk4_38``, ``explicit_adams``, ``implicit_adams``) with ``step_size``.
    ``rk4`` is the classical Runge–Kutta method, as in a ``ResidualStack``; torchdiffeq's own ``rk4`` (Kutta's
    3/8 rule) is ``rk4_38`` here.

    **Tolerances.** odenet's defaults are ``rtol=1e-3``, ``atol=1e-4`` (``DEFAULT_RTOL``, ``DEFAULT_ATOL``:
    a network's forward rarely needs more), looser than torchdiffeq's ``odeint`` defaults ``1e-7`` / ``1e-9``
    (``TORCHDIFFEQ_RTOL``, ``TORCHDIFFEQ_ATOL``): give ``rtol``/``atol`` to match a torchdiffeq call.

    ``options``: torchdiffeq's options of the chosen method, handed over as they are (adaptive: ``first_step``,
    ``step_t``, ``jump_t``, ``safety``, ``ifactor``, ``dfactor``, ``norm``, ``dtype``; fixed grid: ``interp``,
    ``perturb``; Adams: also ``max_order``, and ``max_iters`` for ``implicit_adams``); an unknown key is refused
    naming it, and so are the ones set by this block's own arguments (``step_size``, ``max_steps`` for
    ``max_num_steps``, ``min_step``, ``max_step``).

    **Adjoint.** ``adjoint=True`` uses ``odeint_adjoint``; ``adjoint_params`` (default: the field's parameters
    that require grad) are the tensors it returns gradients for, exactly as torchdiffeq's: a field that uses a
    tensor from outside its own parameters must list it, and the field's parameters too if they are to be
    trained (``adjoint_params=(*field.parameters(), w)``). ``adjoint_rtol``/``adjoint_atol``/
    ``adjoint_method``/``adjoint_options`` set the backward solve (default: the forward's); ``adjoint_options``
    are added to the forward's options when the methods agree, and may use torchdiffeq's own keys
    (``step_size``; ``max_num_steps``, ``min_step``, ``max_step``; ``norm="seminorm"``). Each is refused unless
    ``adjoint=True``.

    **States and times.** The state is a tensor or a tuple of tensors (the field then returns a tuple of the
    same shapes; the output is a tuple); the finiteness and shape checks apply per tensor.
    ``trajectory(x, times)`` takes any strictly increasing or decreasing grid, ``x`` being the state at
    ``times[0]``; ``solve_event`` integrates until an event function crosses zero (``odeint_event``). ``T``
    is a positive number or a one-element tensor, kept as a float (one that requires grad is refused; give
    ``trajectory`` a ``times`` tensor that requires grad for gradients with respect to time).

    An option the chosen method would ignore is refused: ``step_size`` with an adaptive method;
    ``rtol``/``atol`` (but with ``implicit_adams``), ``max_steps``, ``min_step`` or ``max_step`` with a fixed
    grid. ``nfe`` counts every field evaluation of the last forward, ``nfe_backward`` those of the adjoint
    solve that followed it; ``stats`` adds accepted and rejected steps of both. ``regularizers`` (``kinetic``,
    ``jacobian``; tensor states only) are integrated alongside the state while training (see
    ``Block.regularization``); with ``penalty_error_control=False`` (adaptive methods with regularizers only)
    an adaptive solver's error norm covers the state alone, so the penalty channels ride on the steps the
    state needs.

    **Backend.** ``backend="odenet"`` (``dopri5``; :func:`odenet.adaptive.odeint`): torchdiffeq's method and
    controller (same steps and ``nfe``, outputs to rounding) at about half the cost for a small field
    (``benchmarks/adaptive.py``); backprop through the steps, a tensor state, ``options`` ``adaptive.OPTIONS``;
    no adjoint, ``times`` requiring grad or ``solve_event`` (each refused naming ``backend``).

    Only the solver's own failures become a ``SolverError``; an exception raised by the field reaches the
    caller unchanged. The initial state must be finite; an empty batch returns at once (``nfe`` 0).
    """

    DEFAULT_RTOL: ClassVar[float] = 1e-3
    DEFAULT_ATOL: ClassVar[float] = 1e-4
    #: torchdiffeq's ``odeint`` defaults, for comparison (not used by odenet).
    TORCHDIFFEQ_RTOL: ClassVar[float] = 1e-7
    TORCHDIFFEQ_ATOL: ClassVar[float] = 1e-9
    #: The values of the options left out.
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "rtol": DEFAULT_RTOL, "atol": DEFAULT_ATOL, "max_steps": 10_000, "min_step": 0.0, "max_step": math.inf,
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
        options: dict[str, Any] | None = None,
        adjoint_params: Sequence[Tensor] | None = None,
        adjoint_rtol: float | None = None,
        adjoint_atol: float | None = None,
        adjoint_method: str | None = None,
        adjoint_options: dict[str, Any] | None = None,
        backend: str = "torchdiffeq",
    ) -> None:
        super().__init__()
        self.T = check_T(T)
        check_field(field, self.T)
        self._init_regularizers(regularizers, noise)
        _check_method("solver", solver)
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
        solver_options = check_options(solver, options) if options is not None else {}
        if "norm" in solver_options and self.regularizers:
            raise ValueError(
                "options['norm'] with regularizers: the solved state carries the penalty channels too; "
                "use penalty_error_control=False to leave them out of the error norm"
            )
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
        self.solver_options = solver_options
        self._init_adjoint(adjoint_params, adjoint_rtol, adjoint_atol, adjoint_method, adjoint_options)
        self.backend = check_backend(backend, solver, adjoint, solver_options)
        self._counter: CountingField = CountingField(field)

    def _init_adjoint(self, params: Any, rtol: Any, atol: Any, method: Any, options: Any) -> None:
        given = dict(zip(_ADJOINT_ARGS, (params, rtol, atol, method, options)))
        stray = [k for k, v in given.items() if v is not None]
        if stray and not self.adjoint:
            raise ValueError(f"{', '.join(stray)} set{'s' if len(stray) == 1 else ''} the adjoint solve: "
                             "give adjoint=True, or drop " + ("it" if len(stray) == 1 else "them"))
        self.adjoint_params = check_adjoint_params(params) if params is not None else None
        self.adjoint_method = _check_method("adjoint_method", method) if method is not None else None
        backward = self.adjoint_method or self.solver
        for name, value in (("adjoint_rtol", rtol), ("adjoint_atol", atol)):
            if value is not None:
                check_number(name, value, low=0.0, low_open=True)
                if backward not in TOLERANCE_SOLVERS:
                    raise ValueError(f"{name} would be ignored by the fixed-grid adjoint method {backward!r}: drop it")
        self.adjoint_rtol = float(rtol) if rtol is not None else None
        self.adjoint_atol = float(atol) if atol is not None else None
        self.adjoint_options = check_adjoint_options(backward, options) if options is not None else None
        if (backward not in ADAPTIVE_SOLVERS and self.step_size is None
                and "step_size" not in (self.adjoint_options or {})):
            raise ValueError(
                f"adjoint_method={backward!r} is fixed-grid: give adjoint_options={{'step_size': h}}"
            )

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    @property
    def options(self) -> dict[str, Any]:
        """The constructor arguments besides field and T that apply to this solver (``ODEBlock(field, T,
        **options)`` rebuilds it): tolerances and step limits when adaptive, ``step_size`` when fixed-grid;
        torchdiffeq ``options`` and the adjoint's arguments when given."""
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
        if self.solver_options:
            out["options"] = dict(self.solver_options)
        if self.backend != "torchdiffeq":
            out["backend"] = self.backend
        for name in _ADJOINT_ARGS:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if isinstance(value, dict) else value
        return out

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None and v != ()}
        if "adjoint_params" in shown:
            shown["adjoint_params"] = f"<{len(self.adjoint_params or ())} tensors>"
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
        clipped at that time, so the step sizes partition the interval solved over (``[0, T]``, or from
        ``times[0]`` to ``times[-1]``) and sum to its length.
        """
        counter = self._counter
        if not isinstance(counter, AdaptiveCountingField) or not counter.accepted:
            return torch.zeros(0)
        h = torch.stack(counter.accepted).cpu()
        if counter.span is not None:
            h[-1] = torch.minimum(h[-1], counter.span.detach().cpu().to(h.dtype) - h[:-1].sum())
        return h

    @property
    def stats(self) -> dict[str, int]:
        stats = {"nfe": self.nfe, "nfe_backward": self.nfe_backward}
        counter = self._counter
        if isinstance(counter, AdaptiveCountingField):
            stats["steps_accepted"] = len(counter.accepted)
            stats["steps_rejected"] = counter.rejected
            if isinstance(counter, AdjointAdaptiveCountingField):
                stats["steps_accepted_backward"] = counter.accepted_backward
                stats["steps_rejected_backward"] = counter.rejected_backward
        elif self.step_size is not None:
            span = float(counter.span) if counter.span is not None else self.T
            stats["steps"] = math.ceil(span / self.step_size - 1e-9)  # torchdiffeq's grid, last step shorter
        return stats

    def _torchdiffeq_options(self) -> dict[str, Any]:
        if not self.adaptive:
            return {"step_size": self.step_size, **self.solver_options}
        options: dict[str, Any] = {"max_num_steps": self.max_steps}
        if self.min_step > 0:
            options["min_step"] = self.min_step
        if math.isfinite(self.max_step):
            options["max_step"] = self.max_step
        return {**options, **self.solver_options}

    def _adjoint_kwargs(self, forward: dict[str, Any]) -> dict[str, Any]:
        """``odeint_adjoint``'s adjoint arguments; ``forward``: the forward's torchdiffeq options."""
        params = self.adjoint_params if self.adjoint_params is not None else self.field.parameters()
        kwargs: dict[str, Any] = {"adjoint_params": tuple(p for p in params if p.requires_grad)}
        if self.adjoint_rtol is not None:
            kwargs["adjoint_rtol"] = self.adjoint_rtol
        if self.adjoint_atol is not None:
            kwargs["adjoint_atol"] = self.adjoint_atol
        if self.adjoint_method is None and self.adjoint_options is None:
            return kwargs  # torchdiffeq's own default: the forward's method and options
        method = self.adjoint_method or self.solver
        if method == self.solver:
            base = {k: v for k, v in forward.items() if k != "norm"}
        elif method in ADAPTIVE_SOLVERS:
            base = {"max_num_steps": self.max_steps}
        else:
            base = {"step_size": self.step_size}
        kwargs["adjoint_method"] = torchdiffeq_method(method)
        kwargs["adjoint_options"] = {**base, **(self.adjoint_options or {})}
        return kwargs

    def _new_counter(self, field: FieldFn, span: Tensor | None) -> CountingField:
        if not self.adaptive:
            self._counter = CountingField(field, span)
        elif self.adjoint and (self.adjoint_method or self.solver) in ADAPTIVE_SOLVERS:
            self._counter = AdjointAdaptiveCountingField(field, span)
        else:
            self._counter = AdaptiveCountingField(field, span)
        return self._counter

    def _call(self, run: Callable[..., Any], counter: CountingField, options: dict[str, Any]) -> Any:
        """``run(**kwargs)`` with the method, tolerances and options; torchdiffeq's failures as a SolverError."""
        kwargs: dict[str, Any] = dict(
            rtol=self.rtol, atol=self.atol, method=torchdiffeq_method(self.solver), options=options
        )
        try:
            return run(**kwargs)
        except AssertionError as err:
            if raised_by_field(err):
                raise
            raise self.solver_error(str(err)) from err
        finally:
            counter.in_backward = True

    def _solve(self, x: State, times: Tensor, regularize: bool = False) -> State:
        dynamics = self._dynamics() if regularize else None
        if dynamics is not None and isinstance(x, tuple):
            raise ValueError("regularizers need a tensor state: a tuple state has no penalty channels")
        span = (times[-1] - times[0]).abs().detach()
        if numel(x) == 0:  # nothing to integrate (torchdiffeq's error norm of an empty state is NaN)
            self._new_counter(self.field, span).in_backward = True
            self._record_regularization({k: x.new_zeros(x.shape[:1]) for k in dynamics.regularizers}  # type: ignore[union-attr]
                                        if dynamics is not None else None)
            if isinstance(x, tuple):
                return tuple(xi.unsqueeze(0).expand(len(times), *xi.shape).clone() for xi in x)
            return x.unsqueeze(0).expand(len(times), *x.shape).clone()
        field: FieldFn = self.field
        if dynamics is not None:
            x, field = dynamics.augment(x), dynamics  # type: ignore[arg-type]
        counter = self._new_counter(field, span)
        options = self._torchdiffeq_options()
        if dynamics is not None and self.adaptive and not self.penalty_error_control:
            options["norm"] = partial(_state_rms_norm, channels=len(dynamics.regularizers))
        if self.backend == "odenet":
            out = self._own_solve(counter, x, times, options.get("norm"))
        elif self.adjoint:
            out = self._call(partial(torchdiffeq.odeint_adjoint, counter, x, times, **self._adjoint_kwargs(options)),
                             counter, options)
        else:
            out = self._call(partial(torchdiffeq.odeint, counter, x, times), counter, options)
        integrals = None
        if dynamics is not None:
            out, integrals = dynamics.split(out)
            integrals = {k: v[-1] for k, v in integrals.items()}
        self._record_regularization(integrals)
        return out

    def own_solve_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`odenet.adaptive.odeint` (``backend="odenet"``) that give this block's
        tolerances, step limits and options."""
        return dict(rtol=self.rtol, atol=self.atol, pair=adaptive.EMBEDDED_PAIRS[self.solver], max_steps=self.max_steps,
                    min_step=self.min_step, max_step=self.max_step,
                    **{k: v for k, v in self.solver_options.items() if k in adaptive.OPTIONS})

    def _own_solve(self, counter: CountingField, x: State, times: Tensor, norm: Any) -> Tensor:
        """``adaptive.odeint`` (``backend="odenet"``) of this block (``norm``: the error norm, None for RMS)."""
        if isinstance(x, tuple) or times.requires_grad:
            raise ValueError("backend='odenet' takes a tensor state and gives no gradients with respect to times: use "
                             "backend='torchdiffeq' for a tuple state or times that require grad")
        try:
            return adaptive.odeint(counter, x, times.tolist(), **{**self.own_solve_options(), "norm": norm})
        except adaptive.AdaptiveSolveError as err:
            raise self.solver_error(str(err)) from err
        finally:
            counter.in_backward = True

    def with_steps(self, steps: adaptive.Steps) -> ODEBlock:
        """A shallow copy (same field) whose solver statistics (``nfe``, ``stats``, ``step_sizes``) are ``steps``:
        one problem of a solve of many (:func:`odenet.adaptive.odeint_members`), reported as if solved alone."""
        out = copy.copy(self)
        counter = AdaptiveCountingField(self.field, torch.tensor(self.T))
        counter.forward_calls, counter.rejected = steps.nfe, steps.rejected
        counter.accepted = [torch.tensor(h, dtype=torch.float64) for h in steps.accepted]
        counter.in_backward = True
        out._counter = counter
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

    def forward(self, x: State) -> State:
        """The state at ``T`` (a tuple for a tuple state ``x``)."""
        check_state(x)
        times = torch.tensor([0.0, self.T], dtype=state_dtype(x), device=state_device(x))
        out = self._solve(x, times, regularize=True)
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def trajectory(self, x: State, times: Tensor | Sequence[float] | int = 32) -> State:
        """States at ``times``, ``x`` being the state at ``times[0]`` (as ``odeint``): any strictly increasing
        or decreasing grid (a decreasing one integrates backwards in time); an int ``n`` means ``n`` equal
        intervals of ``[0, T]``. A ``times`` tensor that requires grad gets gradients with respect to time.

        Returns shape ``(len(times), *x.shape)`` (a tuple of such for a tuple state).
        """
        check_state(x)
        dtype, device = state_dtype(x), state_device(x)
        if isinstance(times, bool):
            raise ArgumentTypeError(f"times must be an int (intervals) or a sequence of times, got {times!r}")
        if isinstance(times, int):
            if times < 1:
                raise ValueError(f"times must be >= 1 intervals, got {times}")
            grid = torch.linspace(0.0, self.T, times + 1, dtype=dtype, device=device)
        else:
            grid = times.to(dtype=dtype, device=device) if isinstance(times, Tensor) else torch.as_tensor(
                times, dtype=dtype, device=device)
            if grid.ndim != 1 or len(grid) < 2:
                raise ValueError(f"times must be a 1-D sequence of at least 2 times, got shape {tuple(grid.shape)}")
            step = grid[1:] - grid[:-1]
            if not bool(torch.isfinite(grid).all()) or not (bool((step > 0).all()) or bool((step < 0).all())):
                raise ValueError(
                    "times must be finite and strictly increasing or strictly decreasing (x is the state at "
                    f"times[0]), got {grid.detach().cpu().tolist()}"
                )
        return self._solve(x, grid)

    def solve_event(
        self, x: State, event_fn: Callable[[Tensor, State], Tensor], t0: float | Tensor = 0.0,
        reverse_time: bool = False,
    ) -> tuple[Tensor, State]:
        """Integrate from ``x`` at ``t0`` until ``event_fn(t, x)`` crosses zero: ``(event_t, x(event_t))``.

        As ``torchdiffeq.odeint_event`` (which returns the states at ``t0`` and at the event; this returns the
        second): gradients flow to ``x``, ``t0`` and the field's parameters through the event time too.
        ``reverse_time=True`` integrates backwards. ``T`` plays no part. A multi-valued ``event_fn`` (e.g. one
        value per sample) stops at the first of its entries to cross zero. The event time is found by bisection
        to within ``atol`` (the block's; with a fixed grid, between the grid's states interpolated as
        ``options['interp']`` says). No event within ``max_steps`` adaptive steps (20,000 fixed-grid steps)
        raises a ``SolverError``. No regularizer is integrated (``regularization`` is left empty).
        """
        check_state(x)
        check_flag("reverse_time", reverse_time)
        if self.backend != "torchdiffeq":
            raise ValueError("solve_event runs on torchdiffeq (odeint_event): make the block with "
                             "backend='torchdiffeq'")
        if not callable(event_fn):
            raise ArgumentTypeError(f"event_fn must be a callable (t, x) -> tensor, got {type(event_fn).__name__}")
        if numel(x) == 0:
            raise ValueError("solve_event needs a non-empty state: an empty batch has no event")
        dtype, device = state_dtype(x), state_device(x)
        start = t0.to(dtype=dtype, device=device) if isinstance(t0, Tensor) else torch.tensor(
            check_number("t0", t0), dtype=dtype, device=device)
        if start.numel() != 1:
            raise ValueError(f"t0 must be one time, got shape {tuple(start.shape)}")

        def event(t: Tensor, state: State) -> Tensor:
            try:
                return event_fn(t, state)
            except Exception as err:
                mark_field_error(err)
                raise

        counter = self._new_counter(self.field, None)
        options = self._torchdiffeq_options()
        interface: Callable[..., Any] = torchdiffeq.odeint
        if self.adjoint:
            interface = partial(torchdiffeq.odeint_adjoint, **self._adjoint_kwargs(options))
        run = partial(torchdiffeq.odeint_event, counter, x, start.reshape(()), event_fn=event,
                      reverse_time=reverse_time, odeint_interface=interface)
        try:
            event_t, solution = self._call(run, counter, options)
        except RuntimeError as err:
            if "maximum number of iterations" not in str(err) or raised_by_field(err):
                raise
            raise SolverError(f"{self.solver}: no event within 20,000 steps of step_size={self.step_size:g}; "
                              "check event_fn's sign change, or take a larger step_size") from err
        counter.span = (event_t - start).abs().detach()
        self._record_regularization(None)
        state = tuple(s[-1] for s in solution) if isinstance(solution, tuple) else solution[-1]
        return event_t, state

    def with_solver(self, solver: str, **options: Any) -> Block:
        """A new block on the same field, carrying this block's options that apply to ``solver`` (tolerances,
        ``adjoint`` and its arguments, regularizers, the ``options`` and ``backend`` it takes); the rest dropped."""
        check_solver_name(solver)
        if wants_stack(solver, options):
            return self._same_mode(make_block(self.field, solver, T=self.T, **options))
        carried = self._carried(solver, options)
        return self._same_mode(make_block(self.field, solver, T=self.T, **carried, **options))

    def _carried(self, solver: str, given: dict[str, Any]) -> dict[str, Any]:
        regularizers = given.get("regularizers", self.regularizers)
        adjoint = given.get("adjoint", self.adjoint)
        backward = given.get("adjoint_method", self.adjoint_method) or solver
        known = solver in ADAPTIVE_SOLVERS or solver in TORCHDIFFEQ_FIXED
        out: dict[str, Any] = {}
        for k, v in self.options.items():
            if k == "solver" or k in given:
                continue
            if k in _ADJOINT_ARGS:
                if not adjoint or (k in ("adjoint_rtol", "adjoint_atol") and backward not in TOLERANCE_SOLVERS):
                    continue
                if k == "adjoint_options":
                    native = ("max_num_steps", "min_step", "max_step") if backward in ADAPTIVE_SOLVERS else (
                        "step_size",)
                    v = {o: w for o, w in v.items() if o in (*method_options(backward), *native)}
                    if not v:
                        continue
            elif k == "options":
                v = {o: w for o, w in v.items() if known and o in method_options(solver)
                     and not (o == "norm" and regularizers)}
                if not v:
                    continue
            elif not _applies(k, solver, regularizers) or (k == "backend" and (adjoint or set(
                    given.get("options", self.solver_options)) - set(adaptive.OPTIONS))):
                continue  # odenet's solve: no adjoint, its own options only
            out[k] = v
        return out


BLOCK_CLASSES["ode"] = ODEBlock
