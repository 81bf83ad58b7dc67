"""Folds of a step map: ``det(dx_{k+1} / dx_k)`` along the trajectory of a ``ResidualStack``.

An ODE flow map has ``det = exp(int div F dt) > 0``; a step map with ``det <= 0`` somewhere (and ``> 0`` far
away) folds the state space, so it is not injective: two distinct states land on the same point, trajectories
cross, which no ODE flow can do (Ott et al., ICLR 2021).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..blocks import ResidualStack
from ..models import Classifier
from ..solvers import rk_step, stage_times


def step_jacobian_determinants(block: ResidualStack, x: Tensor) -> Tensor:
    """``det(d x_{k+1} / d x_k)`` at every step ``k`` of ``block`` from the states ``x`` (``(n, d)``).

    Returns ``(steps, n)``. For a residual stack the step map is one step of its scheme
    (``x + h F(t_k, x)`` for Euler); for a plain net (``shortcut=False``) it is ``F(t_k, x)``.
    """
    if not isinstance(block, ResidualStack):
        raise ValueError(f"step maps exist only for a ResidualStack, got {type(block).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be (n, d) states, got shape {tuple(x.shape)}")
    field, tableau = block.field, block.tableau
    with torch.no_grad():
        states = block.trajectory(x)
        hs = block.step_sizes.detach().to(dtype=x.dtype, device=x.device)
    times = stage_times(tableau, torch.cumsum(hs, 0) - hs, hs)
    dets = []
    d = x.shape[1]
    for k in range(block.steps):
        t_k = list(times[k].unbind())
        with torch.enable_grad():
            z = states[k].detach().requires_grad_(True)
            out = field(t_k[0], z) if not block.shortcut else rk_step(field, t_k, z, hs[k], tableau)
            # the step map acts on each state alone, so row i of every state's Jacobian is the gradient of the
            # batch sum of output i: d backward passes for the whole batch
            rows = [torch.autograd.grad(out[:, i].sum(), z, retain_graph=i < d - 1)[0] for i in range(d)]
        dets.append(torch.linalg.det(torch.stack(rows, dim=1)).detach())
    return torch.stack(dets)


def fold_mask(model: Classifier, x: Tensor) -> Tensor:
    """Boolean ``(n,)``: the trajectory of input ``x[i]`` meets a step whose map has ``det <= 0``."""
    with torch.no_grad():
        states = model.stem(x)
    return (step_jacobian_determinants(model.block, states) <= 0).any(dim=0)  # type: ignore[arg-type]


def fold_fraction(model: Classifier, x: Tensor) -> float:
    """Fraction of the inputs ``x`` whose trajectory passes a fold of the step map (see :func:`fold_mask`)."""
    return float(fold_mask(model, x).float().mean())


@torch.no_grad()
def predict(model: Classifier, x: Tensor, batch_size: int = 8192) -> Tensor:
    """Predicted class of every input (in batches)."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
