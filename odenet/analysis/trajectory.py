"""Trajectory statistics: the kinetic energy ``int ||F||^2 dt`` and the speed of each step.

For a ``ResidualStack`` the kinetic energy is the stack's own left Riemann sum
``sum_k h_k ||F(t_k, x_k)||^2`` over its states ``x_k`` and step sizes ``h_k`` (for an Euler stack
``F(t_k, x_k) = (x_{k+1} - x_k) / h_k``, the residual branch per unit step); for an ``ODEBlock`` it
is the trapezoidal rule on the solution at ``times``. This is Finlay et al.'s (2020, "How to train
your neural ODE") kinetic-energy term. Norms are per sample over all non-batch dimensions
(dimension 0 is the batch) and averaged over the batch unless ``reduction="none"``.

The results are differentiable (usable as a regulariser); wrap a measurement in
``torch.no_grad()``. A ``Classifier`` is measured on its block, fed ``stem(x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..blocks import Block, ResidualStack
from ._util import check_block, sample_norms, split_model, time_grid

__all__ = ["kinetic_energy", "step_speeds"]

Reduction = Literal["mean", "none"]


def _trajectory(
    model: nn.Module, x: Tensor, times: Tensor | Sequence[float] | int
) -> tuple[Tensor, Tensor, Tensor, Block]:
    """``(t, dt, states, block)``: the states of the model's block from ``stem(x)``, their times and intervals.

    A stack gives its ``steps + 1`` states, ``t_k`` computed as the stack computes its step times
    (so a ``DepthIndexedField`` picks the same layer) and ``dt = h_k`` (differentiable when
    learned); an ODE block its solution at ``times`` (``0`` added when missing).
    """
    stem, block, _ = split_model(model)
    check_block(block)
    x0 = stem(x)
    if isinstance(block, ResidualStack):
        if block.learn_steps:
            h = block.step_sizes.to(dtype=x0.dtype, device=x0.device)
            starts = torch.cumsum(h, 0) - h
        else:
            h = torch.full((block.steps,), block.T / block.steps, dtype=x0.dtype, device=x0.device)
            starts = torch.arange(block.steps, dtype=x0.dtype, device=x0.device) * h
        t = torch.cat([starts, starts[-1:] + h[-1:]])
        return t, h, block.trajectory(x0), block
    grid = time_grid(block.T, times)
    if grid[0] != 0.0:
        grid = [0.0, *grid]
    t = torch.tensor(grid, dtype=x0.dtype, device=x0.device)
    return t, t[1:] - t[:-1], block.trajectory(x0, t), block


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean(dim=-1)
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def kinetic_energy(
    model: nn.Module,
    x: Tensor,
    *,
    times: Tensor | Sequence[float] | int = 32,
    reduction: Reduction = "mean",
) -> Tensor:
    """``int_0^T ||F(t, x(t))||^2 dt`` along the trajectory from ``x``: a scalar (``"none"``: per sample, ``(B,)``).

    Stack: ``sum_k h_k ||F(t_k, x_k)||^2`` (one extra field evaluation per step, at the step's
    state and start time, for every scheme). ODE block: the trapezoidal rule on ``times`` (an int
    ``n``: ``n`` equal intervals of ``[0, T]``; a sequence: on ``[0, times[-1]]``).
    A plain net (``shortcut=False``) has no velocity: ValueError.
    """
    t, dt, states, block = _trajectory(model, x, times)
    if isinstance(block, ResidualStack) and not block.shortcut:
        raise ValueError("a plain net (shortcut=False) maps x <- F(t, x): it has no velocity, so no kinetic energy")
    stack = isinstance(block, ResidualStack)
    points = len(t) - 1 if stack else len(t)  # a stack's sum uses the left end of each step only
    sq = torch.stack([sample_norms(block.field(t[k], states[k])).pow(2) for k in range(points)])
    if stack:
        energy = (dt[:, None] * sq).sum(dim=0)
    else:
        energy = (dt[:, None] * (sq[1:] + sq[:-1]) / 2).sum(dim=0)
    return _reduce(energy, reduction)


def step_speeds(
    model: nn.Module,
    x: Tensor,
    *,
    times: Tensor | Sequence[float] | int = 32,
    reduction: Reduction = "mean",
) -> Tensor:
    """``||x_{k+1} - x_k|| / h_k`` per step: shape ``(steps,)`` (``"none"``: ``(steps, B)``).

    A stack's steps (for a plain net ``h = T / steps``, a nominal step), or an ODE block's
    intervals between ``times``. For an Euler stack it is ``||F(t_k, x_k)||``.
    """
    _, dt, states, _ = _trajectory(model, x, times)
    speeds = torch.stack([sample_norms(states[k + 1] - states[k]) / dt[k] for k in range(len(dt))])
    return _reduce(speeds, reduction)
