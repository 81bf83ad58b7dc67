"""``ResidualStack``: a discrete ResNet, ``steps`` explicit Runge–Kutta steps of one field on ``[0, T]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import torch
from torch import Tensor, nn

from ._args import ArgumentTypeError, check_flag, check_int
from .block_base import (
    BLOCK_CLASSES,
    ODE_ONLY_OPTIONS,
    Block,
    FieldFn,
    FlatTupleField,
    ShapeChecked,
    State,
    check_field,
    check_solver_name,
    check_state,
    check_T,
    make_block,
    wants_stack,
)
from .solvers import get_scheme, rk_step, stage_times

__all__ = ["ResidualStack"]


@final
class ResidualStack(Block):
    """A discrete ResNet: ``steps`` explicit RK steps ``x_{k+1} = x_k + h_k Phi(F, t_k, x_k)`` on ``[0, T]``.

    With ``scheme="euler"`` it is exactly ``steps`` residual blocks ``x + h F(t_k, x)``, all
    sharing the field's weights (use ``DepthIndexedField`` for one weight set per block).
    ``shortcut=False`` is the plain net on the same field, ``x_{k+1} = F(t_k, x_k)``.
    ``learn_steps=True`` makes the step sizes trainable: ``h = T softmax(theta)``, so they stay
    positive and sum to ``T``. ``regularizers`` (``kinetic``, ``jacobian``) are integrated alongside
    the state by the same scheme while training (see ``Block.regularization``).

    The initial state must be finite (a ``NonFiniteStateError``, a ``ValueError``, otherwise); the field's
    output shape is checked at every evaluation. An empty batch runs like any other. ``compile()`` compiles the
    whole solve (see ``Block.compile``).
    """

    compilable = True

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
        self.T = check_T(T)
        check_field(field, self.T)
        self._init_regularizers(regularizers, noise)
        check_int("steps", steps, low=1)
        check_flag("shortcut", shortcut)
        check_flag("learn_steps", learn_steps)
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
        self.steps, self.scheme, self.shortcut, self.learn_steps = int(steps), scheme, shortcut, learn_steps
        if learn_steps:
            self.step_logits = nn.Parameter(torch.zeros(self.steps))
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
        """Stage times of the uniform grid, flattened, cached per dtype and device (eager calls only).

        While ``torch.compile`` traces, the grid is built in the graph (constants the compiler folds) and the
        cache is left alone: a cache filled by the first compiled call would fail the guards of the second
        (a recompile).
        """
        key = (x.dtype, x.device)
        compiling = torch.compiler.is_compiling()
        if compiling or key not in self._grids:
            h = torch.full((self.steps,), self.T / self.steps, dtype=x.dtype, device=x.device)
            t = torch.arange(self.steps, dtype=x.dtype, device=x.device) * h
            grid = list(stage_times(self.tableau, t, h).reshape(-1).unbind())
            if compiling:
                return grid
            self._grids[key] = grid
        return self._grids[key]

    def _solve(self, x: State, keep: bool, start: int = 0, stop: int | None = None) -> list[Tensor] | list[State]:
        """Every state ``x_start .. x_stop`` when ``keep``, else ``[x_stop]``; ``x`` is the state at ``t_start``."""
        check_state(x)
        if isinstance(x, tuple):
            if self.regularizers and not keep and self.training and torch.is_grad_enabled():
                raise ValueError("regularizers need a tensor state: a tuple state has no penalty channels")
            flat = FlatTupleField(self.field, x)
            states = self._steps(flat.flatten(x), keep, start, stop, flat)
            return [flat.unflatten(s) for s in states]
        return self._steps(x, keep, start, stop, None)

    def _steps(self, x: Tensor, keep: bool, start: int, stop: int | None, flat: FieldFn | None) -> list[Tensor]:
        steps, stages = self.steps, self.tableau.stages
        stop = steps if stop is None else stop
        times: Sequence[Tensor]
        hs: Sequence[float | Tensor]
        if self.learn_steps:
            h_all = self.step_sizes.to(x.dtype)
            t = torch.cumsum(h_all, 0) - h_all
            times = list(stage_times(self.tableau, t, h_all).reshape(-1).unbind())
            hs = list(h_all.unbind())
        else:
            times = self._uniform_times(x)
            hs = [self.T / steps] * steps
        dynamics = None if keep or flat is not None else self._dynamics()
        if dynamics is not None:
            x = dynamics.augment(x)
        states = [x] if keep else []
        # The augmented dynamics check the field's output shape themselves.
        field: FieldFn = dynamics if dynamics is not None else flat if flat is not None else ShapeChecked(self.field)
        for k in range(start, stop):
            if self.shortcut:
                x = rk_step(field, times[k * stages : (k + 1) * stages], x, hs[k], self.tableau)
            else:
                x = field(times[k], x)
            if keep:
                states.append(x)
        self._nfe = (stop - start) * stages
        integrals = None
        if dynamics is not None:
            x, integrals = dynamics.split(x)
        self._record_regularization(integrals)
        return states if keep else [x]

    def forward(self, x: State) -> State:
        """The state at ``T`` (a tuple for a tuple state ``x``)."""
        return self._solve(x, keep=False)[-1]

    def step_times(self) -> Tensor:
        """The times ``t_0 = 0 < t_1 < ... < t_N = T`` of the states, float64 (detached when learned)."""
        if self.learn_steps:
            h = self.step_sizes.detach().to(torch.float64)
            return torch.cat([h.new_zeros(1), torch.cumsum(h, 0)])
        return torch.arange(self.steps + 1, dtype=torch.float64) * (self.T / self.steps)

    def _step_indices(self, times: Any) -> list[int]:
        """The step index ``k`` of every requested time (``|time - t_k| <= tol``); a ValueError otherwise."""
        if isinstance(times, (bool, int, str)) or times is None:
            raise ArgumentTypeError(
                f"times must be a sequence of step times t_k = k T / steps (or a tensor), got {times!r}"
            )
        given = times.detach() if isinstance(times, Tensor) else torch.as_tensor(times, dtype=torch.float64)
        if given.ndim != 1 or len(given) < 1 or not (torch.is_floating_point(given) or given.dtype in (
                torch.int32, torch.int64)):
            raise ValueError(f"times must be a 1-D sequence of step times, got shape {tuple(given.shape)}")
        # Times read from float32 cannot be closer to t_k than float32 resolves.
        eps = torch.finfo(given.dtype).eps if torch.is_floating_point(given) else 0.0
        tol = max(1e-9, 4 * eps) * max(1.0, self.T)
        grid = self.step_times()
        wanted = given.to(torch.float64)
        if not bool(torch.isfinite(wanted).all()):
            raise ValueError(f"times must be finite, got {wanted.tolist()}")
        dist = (wanted[:, None] - grid[None, :]).abs()
        near = dist.argmin(dim=1)
        off = [i for i in range(len(wanted)) if float(dist[i, near[i]]) > tol]
        if off:
            shown = ", ".join(
                f"{float(wanted[i]):.10g} (nearest step times {self._neighbours(grid, float(wanted[i]))})"
                for i in off[:4]
            )
            raise ValueError(
                f"times must be step times t_k of this stack ({self.steps} steps on [0, {self.T:g}]) within {tol:.1g}; "
                f"not: {shown}. Use steps=N whose grid holds every time, or an ODEBlock for times anywhere"
            )
        idx = [int(k) for k in near]
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(
                f"times must be increasing (step times {[float(grid[k]) for k in idx]}): a ResidualStack "
                "steps forward in time only"
            )
        return idx

    @staticmethod
    def _neighbours(grid: Tensor, t: float) -> str:
        k = int(torch.searchsorted(grid, torch.tensor([t], dtype=grid.dtype)).item())
        near = [float(grid[j]) for j in (k - 1, k) if 0 <= j < len(grid)]
        return " and ".join(f"{v:.10g}" for v in near)

    def trajectory(self, x: State, times: Any = None) -> State:
        """The states ``x_0 .. x_N``, shape ``(steps + 1, *x.shape)`` (a tuple of such for a tuple state).

        ``times``: an increasing sequence of step times ``t_k`` (each within ``1e-9 max(1, T)`` of one, or 4
        float32 ulps for a float32 tensor; ``t_k = k T / steps``, or the learned grid's): the states there,
        ``x`` being the state at ``times[0]`` (so only the steps from ``times[0]`` run). A time that is no step
        time is a ValueError naming the nearest step times.
        """
        if times is None:
            states = self._solve(x, keep=True)
            start, picks = 0, None
        else:
            idx = self._step_indices(times)
            states = self._solve(x, keep=True, start=idx[0], stop=idx[-1])
            start, picks = idx[0], idx
        if picks is not None:
            states = [states[k - start] for k in picks]
        if isinstance(x, tuple):
            return tuple(torch.stack(parts) for parts in zip(*states))
        return torch.stack(states)  # type: ignore[arg-type]

    def with_solver(self, solver: str, **options: Any) -> Block:
        check_solver_name(solver)
        if not self.shortcut and (solver != "euler" or set(options) & ODE_ONLY_OPTIONS):
            raise ValueError(
                f"a plain net (shortcut=False) iterates a map, not an ODE: it has no {solver!r} integration; "
                "only with_solver('euler', steps=N) applies"
            )
        if wants_stack(solver, options):
            options.setdefault("steps", self.steps)
            options.setdefault("shortcut", self.shortcut)
        options.setdefault("regularizers", self.regularizers)
        options.setdefault("noise", self.noise)
        return self._same_mode(make_block(self.field, solver, T=self.T, **options))


BLOCK_CLASSES["stack"] = ResidualStack
