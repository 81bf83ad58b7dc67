"""Gradient flow: the norm of ``dL/dx`` at every state of a block (DESIGN: ``gradient_flow``).

For a ``ResidualStack`` the states are ``x_0 .. x_N`` (input, every step, output); for an
``ODEBlock`` they are the solution at chosen times ``t_0 < ... < t_m`` in ``[0, T]``. The gradient
is the *total* derivative of the loss (computed from the block's output at ``T``) with respect to
that state, i.e. the backpropagated signal ``dL/dx_k = (dx_N/dx_k)^T dL/dx_N`` that reaches layer
``k``, as in He et al. (2016) and DESIGN's ``dL/dx_l = dL/dx_L (1 + d/dx_l sum F)``.

Per-sample convention: ``loss_fn(output, target)`` returns either per-sample losses ``(B,)`` or
their batch mean (a scalar, as ``F.cross_entropy`` does by default). The gradients reported are
per-sample, ``g_i = d loss_i / d x_i`` (the batch mean's gradient times ``B``), so they do not
shrink with the batch size. Samples must not interact in the block (no batch statistics).

The model's parameters, their ``.grad`` and its train/eval mode are left untouched; set the mode
(``model.eval()``) before measuring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import ODEBlock, ResidualStack
from ._util import LossFn, check_block, sample_norms, split_model, stack_times, time_grid

__all__ = ["StateGradients", "gradient_norms", "state_gradients"]

Reduction = Literal["mean", "total", "none"]


class StateGradients(NamedTuple):
    """Per-sample gradients of the loss with respect to the block's states."""

    times: Tensor
    """Time of each state, shape ``(n,)`` (float64): ``t_k`` of the stack's steps, or the requested times."""
    grads: Tensor
    """``d loss_i / d x_i(t_j)``, shape ``(n, B, *state_shape)``."""
    loss: float
    """The batch-mean loss."""


class _Shifted(nn.Module):
    """``F(t0 + s, x)``: the field on a segment ``[t0, t1]`` seen as ``[0, t1 - t0]``."""

    def __init__(self, field: nn.Module, t0: float) -> None:
        super().__init__()
        self.field, self.t0 = field, t0

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.field(t + self.t0, x)


def _stack_states(stack: ResidualStack, x0: Tensor) -> list[Tensor]:
    """``[x_0, ..., x_N]`` as the very tensors of the stack's forward graph (captured by a pre-hook).

    The state ``x_k`` is the input of the first field evaluation of step ``k`` (row 0 of an
    explicit tableau is empty, and a plain net calls ``F(t_k, x_k)`` once per step).
    """
    stages = stack.tableau.stages if stack.shortcut else 1
    captured: list[Tensor] = []
    calls = 0

    def hook(module: nn.Module, args: tuple) -> None:
        nonlocal calls
        if calls % stages == 0:
            captured.append(args[1])
        calls += 1

    handle = stack.field.register_forward_pre_hook(hook)
    try:
        out = stack(x0)
    finally:
        handle.remove()
    if len(captured) != stack.steps or captured[0] is not x0:
        raise RuntimeError(
            f"captured {len(captured)} step inputs for a {stack.steps}-step stack: the stack must call its "
            "field as field(t, x), once per stage"
        )
    return captured + [out]


def _ode_states(block: ODEBlock, x0: Tensor, requested: list[float]) -> tuple[list[Tensor], list[int]]:
    """States at every time of ``{0} | requested | {T}``, chained segment by segment, and the requested indices.

    Each segment ``[t_j, t_{j+1}]`` is one solve with the block's own options (solver, tolerances,
    adjoint), started from the previous segment's output, so the gradient with respect to an
    intermediate state is the total derivative. An adaptive solver restarts at each time (its
    steps differ slightly from one solve with output times; the difference is within tolerance).
    """
    T = block.T
    grid = sorted({0.0, T, *requested})
    states = [x0]
    x = x0
    for t0, t1 in zip(grid, grid[1:]):
        segment = ODEBlock(_Shifted(block.field, t0), T=t1 - t0, **block.options)
        x = segment(x)
        states.append(x)
    return states, [grid.index(t) for t in requested]


def state_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    times: Tensor | Sequence[float] | int = 32,
) -> StateGradients:
    """Per-sample gradients ``d loss_i / d x_i`` at every state of the model's block.

    ``model`` is a ``Classifier`` (stem -> block -> head; the loss is ``loss_fn(head(x_T), y)``)
    or a bare block (``loss_fn(x_T, y)``). A ``ResidualStack`` (any scheme, plain or learned
    steps) gives its ``steps + 1`` states; an ``ODEBlock`` (adjoint or direct) gives the states at
    ``times`` (an int ``n``: ``n`` equal intervals of ``[0, T]``, ``n + 1`` times; or a sequence in
    ``[0, T]``), ignored for stacks.
    """
    stem, block, head = split_model(model)
    check_block(block)
    with torch.no_grad():
        x0 = stem(x)
    x0 = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        if isinstance(block, ResidualStack):
            states = _stack_states(block, x0)
            keep = list(range(len(states)))
            t = stack_times(block)
        else:
            requested = time_grid(block.T, times)
            states, keep = _ode_states(block, x0, requested)
            t = torch.tensor(requested, dtype=torch.float64)
        loss = loss_fn(head(states[-1]), y)
        batch = x0.shape[0]
        if loss.ndim == 0:
            total, mean = loss * batch, loss
        elif loss.shape == (batch,):
            total, mean = loss.sum(), loss.mean()
        else:
            raise ValueError(
                f"loss_fn must return a scalar (the batch mean) or per-sample losses of shape ({batch},), "
                f"got shape {tuple(loss.shape)}"
            )
        kept = [states[i] for i in keep]
        grads = torch.autograd.grad(total, kept, allow_unused=True)
    grads = tuple(torch.zeros_like(s) if g is None else g for g, s in zip(grads, kept))
    return StateGradients(t, torch.stack(grads).detach(), float(mean.detach()))


def gradient_norms(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    times: Tensor | Sequence[float] | int = 32,
    reduction: Reduction = "mean",
) -> Tensor:
    """The norm of ``dL/dx`` at each state: shape ``(steps + 1,)`` for a stack, ``(len(times),)`` for an ODE block.

    ``reduction``:
      - ``"mean"`` (default): the per-sample norms ``||d loss_i / d x_i||`` averaged over the batch;
      - ``"total"``: the norm of the gradient of the batch-mean loss with respect to the whole batch
        of states, ``sqrt(sum_i ||g_i||^2) / B`` (what ``x_k.grad.norm()`` would give);
      - ``"none"``: the per-sample norms, shape ``(n, B)``.

    See ``state_gradients`` for ``model``, ``loss_fn`` and ``times``.
    """
    if reduction not in ("mean", "total", "none"):
        raise ValueError(f"reduction must be 'mean', 'total' or 'none', got {reduction!r}")
    grads = state_gradients(model, x, y, loss_fn, times=times).grads
    norms = torch.stack([sample_norms(g) for g in grads])
    if reduction == "mean":
        return norms.mean(dim=1)
    if reduction == "total":
        return norms.pow(2).sum(dim=1).sqrt() / norms.shape[1]
    return norms
