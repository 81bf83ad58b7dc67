"""Where an error-controlled solver puts its steps on a trained field, and how concentrated a step grid is.

:func:`adaptive_steps` re-integrates a model's field (the very same weights, a float64 copy by default)
with an adaptive solver (dopri5) on a batch and returns the accepted step sizes with their start times,
the NFE and the accepted / rejected step counts. One solve for the whole batch: torchdiffeq's error norm
is the RMS over every element of the batch state, so the steps are those the batch as a whole needs.

:func:`step_shares` turns any step grid (the solver's, or a stack's learned ``h_k``) into the share of
its steps that falls in each of ``bins`` equal parts of ``[0, T]`` (a step is split in proportion to
its overlap), so a learned grid and an adaptive solver's grid can be compared on one scale: the uniform
grid gives ``1 / bins`` everywhere, steps that concentrate (smaller steps) raise their part's share.
:func:`local_step_sizes` replaces an adaptive grid's two boundary artefacts (the initial step guess, the
last step clipped at ``T``) by their neighbours for such comparisons. :func:`concentration` summarises one
grid of step sizes (largest / smallest, largest / uniform, effective number of steps, and the share of ``T``
covered by the first, middle and last third of the steps).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..blocks import ODEBlock
from ..solvers import ADAPTIVE_SOLVERS
from ._util import check_block, split_model

__all__ = ["AdaptiveSteps", "adaptive_steps", "concentration", "local_step_sizes", "step_shares"]


@dataclass
class AdaptiveSteps:
    """The accepted steps of one adaptive solve of ``[0, T]``: ``starts[i] + sizes[i] = starts[i + 1]``."""

    solver: str
    rtol: float
    atol: float
    T: float
    sizes: list[float]  # accepted step sizes in order (the last one clipped at T), summing to T
    starts: list[float]  # their start times, starts[0] = 0
    nfe: int
    accepted: int
    rejected: int


def adaptive_steps(
    model: nn.Module,
    x: Tensor,
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dtype: torch.dtype | None = torch.float64,
) -> AdaptiveSteps:
    """Solve the field of ``model`` (a block, or a model with ``.stem`` / ``.block``) from ``stem(x)`` with ``solver``.

    The block is re-made around its field with ``with_solver(solver, rtol=rtol, atol=atol, adjoint=False)``
    and run under ``torch.no_grad()`` in eval mode, on a copy of the model converted to ``dtype`` (float64
    by default, so tight tolerances are not limited by float32 rounding; ``None`` keeps the model as it is).
    ``model`` itself is not changed.
    """
    if solver not in ADAPTIVE_SOLVERS:
        raise ValueError(f"solver {solver!r} is not adaptive: use one of {sorted(ADAPTIVE_SOLVERS)}")
    stem, block, _ = split_model(model)
    check_block(block)
    if dtype is not None:
        holder = nn.ModuleList([m for m in (stem, block) if isinstance(m, nn.Module)])
        copied = copy.deepcopy(holder).to(dtype)
        stem = copied[0] if isinstance(stem, nn.Module) else stem
        block = copied[-1]
        x = x.to(dtype)
    block.eval()
    if isinstance(stem, nn.Module):
        stem.eval()
    ode = block.with_solver(solver, rtol=rtol, atol=atol, adjoint=False)
    assert isinstance(ode, ODEBlock) and ode.adaptive
    ode.eval()
    with torch.no_grad():
        ode(stem(x))
    sizes = ode.step_sizes.to(torch.float64)
    starts = torch.cumsum(sizes, 0) - sizes
    stats = ode.stats
    return AdaptiveSteps(
        solver=solver, rtol=float(rtol), atol=float(atol), T=float(ode.T),
        sizes=sizes.tolist(), starts=starts.tolist(), nfe=int(stats["nfe"]),
        accepted=int(stats["steps_accepted"]), rejected=int(stats["steps_rejected"]),
    )


def _as_list(values: Sequence[float] | Tensor) -> list[float]:
    if isinstance(values, Tensor):
        return [float(v) for v in values.detach().reshape(-1).cpu()]
    return [float(v) for v in values]


def local_step_sizes(sizes: Sequence[float] | Tensor) -> list[float]:
    """An adaptive solver's accepted steps with its two boundary artefacts replaced by their neighbours.

    The first step is the solver's initial guess (torchdiffeq: Hairer's conservative estimate, which the
    controller then grows by at most 10x per step), the last one is clipped at ``T``; neither is a step size
    the error control chose for that part of ``[0, T]``. With fewer than 3 steps the sizes are returned as they are.
    """
    h = _as_list(sizes)
    if len(h) >= 3:
        h[0], h[-1] = h[1], h[-2]
    return h


def step_shares(
    sizes: Sequence[float] | Tensor, T: float | None = None, bins: int = 3,
    local: Sequence[float] | Tensor | None = None,
) -> list[float]:
    """Share of the steps in each of ``bins`` equal parts of ``[0, T]`` (sums to 1; uniform grid: ``1 / bins`` each).

    The steps tile ``[0, T]`` from 0 in order (``T`` defaults to their sum); a step over several parts counts
    in each in proportion to its overlap with it. The share of a part is the number of steps per unit
    time there relative to the whole: larger where the steps are smaller. ``local`` (one per step, e.g.
    :func:`local_step_sizes`) is the step size taken as in force on each interval instead of its own length:
    each interval then counts ``overlap / local`` steps.
    """
    h = _as_list(sizes)
    if not h or any(not (v > 0 and math.isfinite(v)) for v in h):
        raise ValueError("step sizes must be a non-empty sequence of positive finite numbers")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    density = h if local is None else _as_list(local)
    if len(density) != len(h) or any(not (v > 0 and math.isfinite(v)) for v in density):
        raise ValueError("local must hold one positive finite step size per step")
    T = float(sum(h)) if T is None else float(T)
    edges = [T * i / bins for i in range(bins + 1)]
    counts = [0.0] * bins
    start = 0.0
    for size, in_force in zip(h, density):
        end = start + size
        for i in range(bins):
            overlap = min(end, edges[i + 1]) - max(start, edges[i])
            if overlap > 0:
                counts[i] += overlap / in_force
        start = end
    total = sum(counts)
    return [c / total for c in counts]


def concentration(sizes: Sequence[float] | Tensor) -> dict[str, float | list[float]]:
    """How far a grid of step sizes is from uniform.

    ``max_over_min`` (1 for a uniform grid), ``max_over_uniform`` (largest step / (T / N)),
    ``effective_fraction`` (``exp(entropy of h / T) / N``: 1 uniform, 1 / N when one step takes all of T),
    ``index_thirds``: the share of ``T`` covered by the first, middle and last third of the steps (by index;
    a step on a boundary between thirds is split; 1/3 each for a uniform grid).
    """
    h = _as_list(sizes)
    if not h or any(not (v > 0 and math.isfinite(v)) for v in h):
        raise ValueError("step sizes must be a non-empty sequence of positive finite numbers")
    n, T = len(h), float(sum(h))
    p = [v / T for v in h]
    entropy = -sum(q * math.log(q) for q in p)
    thirds = [0.0, 0.0, 0.0]
    for k, q in enumerate(p):  # step k covers index range [k, k + 1) of [0, n); split it over the thirds
        for i in range(3):
            overlap = min(k + 1, n * (i + 1) / 3) - max(k, n * i / 3)
            if overlap > 0:
                thirds[i] += q * overlap
    return {
        "max_over_min": max(h) / min(h),
        "max_over_uniform": max(h) / (T / n),
        "effective_fraction": math.exp(entropy) / n,
        "index_thirds": thirds,
    }
