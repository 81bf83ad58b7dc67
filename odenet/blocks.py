"""The blocks users import: a discrete ResNet (``ResidualStack``) and a torchdiffeq ``ODEBlock``.

Both integrate the same field ``F(t, x)`` on ``[0, T]``; ``with_solver`` re-makes a block around
the very same field object, so a trained model can be evaluated under another integrator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

from .regularization import RegularizedDynamics, check_regularizers
from .solvers import (
    ADAPTIVE_SOLVERS,
    SCHEMES,
    TORCHDIFFEQ_FIXED,
    get_scheme,
    rk_step,
    stage_times,
)

__all__ = ["Block", "ResidualStack", "ODEBlock", "SolverError", "make_block"]


class SolverError(RuntimeError):
    """An integration that could not finish: step-size underflow, too many steps, a non-finite state."""


def _check_field(field: Any) -> None:
    if not isinstance(field, nn.Module):
        raise TypeError(f"field must be an nn.Module with forward(t, x) -> dx/dt, got {type(field).__name__}")


def _check_T(T: float) -> float:
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"T must be a positive finite number, got {T!r}")
    return float(T)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")


def _shape_error(out: Tensor, x: Tensor) -> ValueError:
    return ValueError(
        f"the field returned shape {tuple(out.shape)} for a state of shape {tuple(x.shape)}; "
        "a vector field must return dx/dt shaped like x"
    )


class _ShapeChecked:
    """Calls ``field`` and checks that each output has its input's shape (used on the first step only)."""

    def __init__(self, field: nn.Module) -> None:
        self.field = field

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.field(t, x)
        if out.shape != x.shape:
            raise _shape_error(out, x)
        return out


class Block(nn.Module):
    """What every block shares: a field, a horizon ``T``, solver statistics and ``with_solver``."""

    field: nn.Module
    T: float
    regularizers: tuple[str, ...] = ()
    noise: str = "gaussian"

    def _init_regularizers(self, regularizers: Sequence[str], noise: str) -> None:
        self.regularizers = check_regularizers(regularizers, noise)
        self.noise = noise
        self._regularization: dict[str, Tensor] = {}

    def _dynamics(self) -> RegularizedDynamics | None:
        """The augmented dynamics when penalties are integrated: regularizers set, training, grad enabled."""
        if self.regularizers and self.training and torch.is_grad_enabled():
            return RegularizedDynamics(self.field, self.regularizers, self.noise)
        return None

    def _record_regularization(self, integrals: dict[str, Tensor] | None) -> None:
        self._regularization = {k: v.mean() for k, v in integrals.items()} if integrals else {}

    @property
    def regularization(self) -> dict[str, Tensor]:
        """The penalties of the last training forward, batch means of per-sample integrals over ``[0, T]``.

        ``kinetic``: ``int ||F(t, x)||^2 dt``; ``jacobian``: the Hutchinson estimate of
        ``int ||dF/dx||_F^2 dt``. Computed only in training mode with gradients enabled (empty otherwise);
        differentiable, to be added to the loss with their weights.
        """
        return self._regularization

    @property
    def nfe(self) -> int:
        """Field evaluations of the last forward (or trajectory) call."""
        raise NotImplementedError

    @property
    def nfe_backward(self) -> int:
        """Field evaluations of the backward pass after the last forward (0 unless adjoint)."""
        return 0

    @property
    def stats(self) -> dict[str, int]:
        """Solver statistics of the last forward: ``nfe``, ``nfe_backward`` and step counts."""
        raise NotImplementedError

    def with_solver(self, solver: str, **options: Any) -> Block:
        """A new block integrating the *same* field object with ``solver``.

        A fixed scheme name (``euler``, ``midpoint``, ``heun``, ``rk4``, ...) with ``steps=N``
        gives a ``ResidualStack``; an adaptive name (``dopri5``, ...), or any torchdiffeq method
        with ``step_size=h``, gives an ``ODEBlock``.
        """
        raise NotImplementedError

    def trajectory(self, x: Tensor) -> Tensor:
        """Every state of the solve, stacked along a new leading dimension."""
        raise NotImplementedError


def _wants_stack(solver: str, options: dict[str, Any]) -> bool:
    """A fixed scheme without torchdiffeq-only options is integrated by a ResidualStack."""
    return solver in SCHEMES and not (set(options) & _ODE_ONLY_OPTIONS)


def make_block(field: nn.Module, solver: str = "euler", T: float = 1.0, **options: Any) -> Block:
    """The block that integrates ``field`` on ``[0, T]`` with ``solver``.

    Fixed schemes without ``step_size`` give a ``ResidualStack`` (``steps`` required); everything
    else gives an ``ODEBlock`` (torchdiffeq).
    """
    if _wants_stack(solver, options):
        if "steps" not in options:
            raise ValueError(
                f"solver {solver!r} is a fixed-step scheme: give steps=N (a ResidualStack) "
                "or step_size=h (a torchdiffeq ODEBlock)"
            )
        return ResidualStack(field, T=T, scheme=solver, **options)
    if "steps" in options:
        raise ValueError(
            f"steps is only for fixed-step schemes {sorted(SCHEMES)}; adaptive solver {solver!r} "
            "takes rtol/atol (or step_size for torchdiffeq's fixed-grid methods)"
        )
    return ODEBlock(field, T=T, solver=solver, **options)


class ResidualStack(Block):
    """A discrete ResNet: ``steps`` explicit RK steps ``x_{k+1} = x_k + h_k Phi(F, t_k, x_k)`` on ``[0, T]``.

    With ``scheme="euler"`` it is exactly ``steps`` residual blocks ``x + h F(t_k, x)``, all
    sharing the field's weights (use ``DepthIndexedField`` for one weight set per block).
    ``shortcut=False`` is the plain net on the same field, ``x_{k+1} = F(t_k, x_k)``.
    ``learn_steps=True`` makes the step sizes trainable: ``h = T softmax(theta)``, so they stay
    positive and sum to ``T``. ``regularizers`` (``kinetic``, ``jacobian``) are integrated alongside
    the state by the same scheme while training (see ``Block.regularization``).
    """

    def __init__(
        self,
        field: nn.Module,
        steps: int,
        T: float = 1.0,
        scheme: str = "euler",
        shortcut: bool = True,
        learn_steps: bool = False,
        regularizers: Sequence[str] = (),
        noise: str = "gaussian",
    ) -> None:
        super().__init__()
        _check_field(field)
        self._init_regularizers(regularizers, noise)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.T = _check_T(T)
        self.tableau = get_scheme(scheme)
        if not shortcut and scheme != "euler":
            raise ValueError(
                f"shortcut=False (a plain net, x <- F(t, x)) has no scheme: use scheme='euler', not {scheme!r}"
            )
        if learn_steps and not shortcut:
            raise ValueError("learn_steps=True needs shortcut=True: a plain net has no step size to learn")
        if self.regularizers and not shortcut:
            raise ValueError("regularizers need shortcut=True: a plain net x <- F(t, x) integrates no trajectory")
        self.field = field
        self.steps, self.scheme, self.shortcut, self.learn_steps = steps, scheme, shortcut, learn_steps
        if learn_steps:
            self.step_logits = nn.Parameter(torch.zeros(steps))
        self._grids: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        self._nfe = 0

    @property
    def step_sizes(self) -> Tensor:
        """The step sizes ``h_k`` (differentiable when learned), shape ``(steps,)``."""
        if self.learn_steps:
            return self.T * torch.softmax(self.step_logits, dim=0)
        return torch.full((self.steps,), self.T / self.steps)

    @property
    def nfe(self) -> int:
        return self._nfe

    @property
    def stats(self) -> dict[str, int]:
        return {"nfe": self._nfe, "nfe_backward": 0, "steps": self.steps}

    def extra_repr(self) -> str:
        kind = "plain" if not self.shortcut else self.scheme
        return f"steps={self.steps}, T={self.T}, scheme={kind}, learn_steps={self.learn_steps}"

    def _uniform_times(self, x: Tensor) -> list[Tensor]:
        """Stage times of the uniform grid, flattened, cached per dtype and device."""
        key = (x.dtype, x.device)
        if key not in self._grids:
            h = torch.full((self.steps,), self.T / self.steps, dtype=x.dtype, device=x.device)
            t = torch.arange(self.steps, dtype=x.dtype, device=x.device) * h
            self._grids[key] = list(stage_times(self.tableau, t, h).reshape(-1).unbind())
        return self._grids[key]

    def _solve(self, x: Tensor, keep: bool) -> Tensor | list[Tensor]:
        steps, stages = self.steps, self.tableau.stages
        if self.learn_steps:
            h_all = self.step_sizes.to(x.dtype)
            t = torch.cumsum(h_all, 0) - h_all
            times = list(stage_times(self.tableau, t, h_all).reshape(-1).unbind())
            hs: Sequence[float | Tensor] = list(h_all.unbind())
        else:
            times = self._uniform_times(x)
            hs = [self.T / steps] * steps
        dynamics = None if keep else self._dynamics()
        if dynamics is not None:
            x = dynamics.augment(x)
        states = [x] if keep else []
        field: Any = dynamics if dynamics is not None else _ShapeChecked(self.field)
        base: Any = dynamics if dynamics is not None else self.field
        for k in range(steps):
            if self.shortcut:
                x = rk_step(field, times[k * stages : (k + 1) * stages], x, hs[k], self.tableau)
            else:
                x = field(times[k], x)
            if keep:
                states.append(x)
            field = base
        self._nfe = steps * stages
        integrals = None
        if dynamics is not None:
            x, integrals = dynamics.split(x)
        self._record_regularization(integrals)
        return states if keep else x

    def forward(self, x: Tensor) -> Tensor:
        """The state at ``T``."""
        return self._solve(x, keep=False)

    def trajectory(self, x: Tensor) -> Tensor:
        """All ``steps + 1`` states ``x_0 .. x_N``, shape ``(steps + 1, *x.shape)``."""
        return torch.stack(self._solve(x, keep=True))

    def with_solver(self, solver: str, **options: Any) -> Block:
        if not self.shortcut and (solver != "euler" or set(options) & _ODE_ONLY_OPTIONS):
            raise ValueError(
                f"a plain net (shortcut=False) iterates a map, not an ODE: it has no {solver!r} integration; "
                "only with_solver('euler', steps=N) applies"
            )
        if _wants_stack(solver, options):
            options.setdefault("steps", self.steps)
            options.setdefault("shortcut", self.shortcut)
        options.setdefault("regularizers", self.regularizers)
        options.setdefault("noise", self.noise)
        return make_block(self.field, solver, T=self.T, **options)


class _CountingField:
    """Wraps a field for torchdiffeq: counts evaluations (forward and backward apart) and steps."""

    def __init__(self, field: nn.Module) -> None:
        self.field = field
        self.forward_calls = 0
        self.backward_calls = 0
        self.in_backward = False

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        out = self.field(t, x)
        if self.in_backward:
            self.backward_calls += 1
        else:
            if self.forward_calls == 0 and out.shape != x.shape:
                raise _shape_error(out, x)
            self.forward_calls += 1
        return out


class _AdaptiveCountingField(_CountingField):
    """Also records accepted and rejected steps through torchdiffeq's step callbacks."""

    def __init__(self, field: nn.Module, t_end: Tensor | None = None) -> None:
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


_ODE_ONLY_OPTIONS = {"rtol", "atol", "adjoint", "step_size", "max_steps", "min_step", "max_step",
                     "penalty_error_control"}


class ODEBlock(Block):
    """Integrates ``field`` on ``[0, T]`` with torchdiffeq (``odeint``, or ``odeint_adjoint``).

    ``solver`` is an adaptive method (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``,
    ``adaptive_heun``) controlled by ``rtol``/``atol``, ``max_steps`` and the step-size limits
    ``min_step``/``max_step``; or a torchdiffeq fixed-grid method (``euler``, ``rk4``, ...) with
    ``step_size``. ``nfe`` counts every field evaluation of the last forward, ``nfe_backward``
    those of the adjoint solve that followed it; ``stats`` adds accepted and rejected steps of both.
    ``regularizers`` (``kinetic``, ``jacobian``) are integrated alongside the state while training
    (see ``Block.regularization``); with ``penalty_error_control=False`` an adaptive solver's error norm
    covers the state alone, so the penalty channels ride on the steps the state needs.
    """

    def __init__(
        self,
        field: nn.Module,
        T: float = 1.0,
        solver: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        adjoint: bool = False,
        step_size: float | None = None,
        max_steps: int = 10_000,
        min_step: float = 0.0,
        max_step: float = math.inf,
        regularizers: Sequence[str] = (),
        noise: str = "gaussian",
        penalty_error_control: bool = True,
    ) -> None:
        super().__init__()
        _check_field(field)
        self._init_regularizers(regularizers, noise)
        self.penalty_error_control = bool(penalty_error_control)
        self.T = _check_T(T)
        if solver not in ADAPTIVE_SOLVERS and solver not in TORCHDIFFEQ_FIXED:
            raise ValueError(
                f"unknown solver {solver!r}; solver must be one of {sorted(ADAPTIVE_SOLVERS + TORCHDIFFEQ_FIXED)} "
                f"(ODEBlock) or a fixed scheme of ResidualStack {sorted(SCHEMES)}"
            )
        _check_positive("rtol", rtol)
        _check_positive("atol", atol)
        _check_positive("step_size", step_size)
        _check_positive("max_step", max_step)
        if solver in TORCHDIFFEQ_FIXED and step_size is None:
            raise ValueError(f"solver {solver!r} is fixed-grid: give step_size=h, or use ResidualStack(field, steps=N)")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        if not (isinstance(min_step, (int, float)) and 0 <= min_step < max_step):
            raise ValueError(f"min_step must be >= 0 and below max_step={max_step}, got {min_step!r}")
        self.field = field
        self.solver, self.rtol, self.atol, self.adjoint = solver, float(rtol), float(atol), bool(adjoint)
        self.step_size, self.max_steps, self.min_step, self.max_step = step_size, max_steps, min_step, max_step
        self._counter: _CountingField = _CountingField(field)

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    @property
    def options(self) -> dict[str, Any]:
        """The constructor arguments besides field and T (what ``with_solver`` carries over)."""
        return {
            "solver": self.solver, "rtol": self.rtol, "atol": self.atol, "adjoint": self.adjoint,
            "step_size": self.step_size, "max_steps": self.max_steps,
            "min_step": self.min_step, "max_step": self.max_step,
            "regularizers": self.regularizers, "noise": self.noise,
            "penalty_error_control": self.penalty_error_control,
        }

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
        else:
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
        field: nn.Module = self.field
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
        times = torch.tensor([0.0, self.T], dtype=x.dtype, device=x.device)
        return self._solve(x, times, regularize=True)[-1]

    def trajectory(self, x: Tensor, times: Tensor | Sequence[float] | int = 32) -> Tensor:
        """States at ``times`` (starting at 0; an int ``n`` means ``n`` equal intervals of ``[0, T]``).

        Returns shape ``(len(times), *x.shape)``.
        """
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
        if _wants_stack(solver, options):
            return make_block(self.field, solver, T=self.T, **options)
        merged = {k: v for k, v in self.options.items() if k not in ("solver", "step_size")}
        merged.update(options)
        return make_block(self.field, solver, T=self.T, **merged)
