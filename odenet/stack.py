"""``ResidualStack``: a discrete ResNet, ``steps`` explicit Runge–Kutta steps of one field on ``[0, T]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import torch
from torch import Tensor, nn

from ._args import check_flag, check_int
from .block_base import (
    BLOCK_CLASSES,
    ODE_ONLY_OPTIONS,
    Block,
    FieldFn,
    ShapeChecked,
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
    output shape is checked at every evaluation. An empty batch runs like any other.
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
        """Stage times of the uniform grid, flattened, cached per dtype and device."""
        key = (x.dtype, x.device)
        if key not in self._grids:
            h = torch.full((self.steps,), self.T / self.steps, dtype=x.dtype, device=x.device)
            t = torch.arange(self.steps, dtype=x.dtype, device=x.device) * h
            self._grids[key] = list(stage_times(self.tableau, t, h).reshape(-1).unbind())
        return self._grids[key]

    def _solve(self, x: Tensor, keep: bool) -> list[Tensor]:
        """Every state ``x_0 .. x_N`` when ``keep``, else ``[x_N]``."""
        check_state(x)
        steps, stages = self.steps, self.tableau.stages
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
        dynamics = None if keep else self._dynamics()
        if dynamics is not None:
            x = dynamics.augment(x)
        states = [x] if keep else []
        # The augmented dynamics check the field's output shape themselves.
        field: FieldFn = dynamics if dynamics is not None else ShapeChecked(self.field)
        for k in range(steps):
            if self.shortcut:
                x = rk_step(field, times[k * stages : (k + 1) * stages], x, hs[k], self.tableau)
            else:
                x = field(times[k], x)
            if keep:
                states.append(x)
        self._nfe = steps * stages
        integrals = None
        if dynamics is not None:
            x, integrals = dynamics.split(x)
        self._record_regularization(integrals)
        return states if keep else [x]

    def forward(self, x: Tensor) -> Tensor:
        """The state at ``T``."""
        return self._solve(x, keep=False)[-1]

    def trajectory(self, x: Tensor) -> Tensor:
        """All ``steps + 1`` states ``x_0 .. x_N``, shape ``(steps + 1, *x.shape)``."""
        return torch.stack(self._solve(x, keep=True))

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
        return make_block(self.field, solver, T=self.T, **options)


BLOCK_CLASSES["stack"] = ResidualStack
