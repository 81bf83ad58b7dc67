"""Lesion studies of a discrete stack (Veit et al. 2016, "Residual networks behave like ensembles of relatively
shallow networks"): delete blocks of a trained ``ResidualStack`` and measure what is left.

Deleting block ``k`` replaces step ``k`` by the identity, ``x_{k+1} = x_k``, in a residual stack
(``x_{k+1} = x_k + h_k Phi(F, t_k, x_k)``) and in a plain one (``x_{k+1} = F(t_k, x_k)``) alike; every other
step keeps its own time ``t_j`` (so a ``DepthIndexedField`` still uses weight set ``j`` at step ``j``).

The per-block relative update ``||x_{k+1} - x_k|| / ||x_k||`` is the effective step size of a standard
ResNet; :func:`evenness` summarises how evenly a stack spreads it over its blocks. Norms are per sample
over all non-batch dimensions (dimension 0 is the batch). A ``Classifier`` is lesioned in its block, fed
``stem(x)``, its head applied to the block's output. Run under ``torch.no_grad()`` for measurements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..blocks import ResidualStack
from ._util import sample_norms, split_model

__all__ = [
    "Evenness",
    "evenness",
    "lesion_accuracy",
    "lesioned_forward",
    "random_lesions",
    "relative_updates",
    "single_lesions",
]


class Evenness(NamedTuple):
    """How evenly nonnegative values ``r_k`` (e.g. per-block relative updates) are spread over ``N`` entries."""

    entropy: float
    """Normalised entropy ``-sum_k p_k ln p_k / ln N`` of the shares ``p_k = r_k / sum_j r_j``: 1 for equal
    values, 0 when one entry holds everything (1 for ``N = 1``)."""
    cv: float
    """Coefficient of variation ``std(r) / mean(r)`` (population std): 0 for equal values."""
    min_share: float
    """``N min_k p_k``: the smallest share relative to an even one (1 for equal values, 0 when a block is idle)."""


def _stack(model: nn.Module) -> tuple[nn.Module, ResidualStack, nn.Module]:
    stem, block, head = split_model(model)
    if not isinstance(block, ResidualStack):
        raise ValueError(
            f"lesions delete steps of a discrete stack (a ResidualStack); got a {type(block).__name__}, "
            "which has no blocks to delete"
        )
    return stem, block, head  # type: ignore[return-value]


def _deleted(deleted: Iterable[int], steps: int) -> set[int]:
    out = set()
    for k in deleted:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"deleted blocks must be integer step indices, got {k!r}")
        if not 0 <= k < steps:
            raise ValueError(f"block {k} out of range: the stack has blocks 0..{steps - 1}")
        out.add(k)
    return out


def _run_from(block: ResidualStack, x: Tensor, start: int, deleted: set[int]) -> Tensor:
    """The block's output from state ``x`` at step ``start``, the steps in ``deleted`` replaced by the identity."""
    grid = block.step_times().tolist()
    k = start
    while k < block.steps:
        if k in deleted:
            k += 1
            continue
        stop = k
        while stop < block.steps and stop not in deleted:
            stop += 1
        x = block.trajectory(x, times=[grid[k], grid[stop]])[-1]  # the run of kept steps k .. stop-1 at once
        k = stop
    return x


def lesioned_forward(model: nn.Module, x: Tensor, deleted: Iterable[int] = ()) -> Tensor:
    """The model's output with the blocks (step indices) in ``deleted`` replaced by the identity."""
    stem, block, head = _stack(model)
    gone = _deleted(deleted, block.steps)
    return head(_run_from(block, stem(x), 0, gone))


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=-1) == y).to(torch.float64).mean())


def _check_labels(x: Tensor, y: Tensor) -> None:
    if y.ndim != 1 or len(y) != len(x) or torch.is_floating_point(y):
        raise ValueError(f"y must be integer class labels of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")


def lesion_accuracy(model: nn.Module, x: Tensor, y: Tensor, deleted: Iterable[int] = ()) -> float:
    """Classification accuracy (fraction correct) with the blocks in ``deleted`` deleted."""
    _check_labels(x, y)
    return _accuracy(lesioned_forward(model, x, deleted), y)


def single_lesions(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Accuracy after deleting block ``k`` alone, for every ``k``: shape ``(N,)``, float64.

    The intact trajectory is computed once; lesion ``k`` restarts from its state ``x_k``.
    """
    _check_labels(x, y)
    stem, block, head = _stack(model)
    states = block.trajectory(stem(x))
    acc = [_accuracy(head(_run_from(block, states[k], k, {k})), y) for k in range(block.steps)]
    return torch.tensor(acc, dtype=torch.float64)


def random_lesions(
    model: nn.Module, x: Tensor, y: Tensor, ks: Sequence[int], draws: int = 10, seed: int = 0
) -> Tensor:
    """Accuracy after deleting ``k`` blocks drawn uniformly at random without replacement, ``draws`` times per
    ``k`` in ``ks``: shape ``(len(ks), draws)``, float64. ``k = 0`` is the intact model; ``k = N`` leaves the
    head on ``stem(x)``."""
    _check_labels(x, y)
    stem, block, head = _stack(model)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= block.steps]
    if bad:
        raise ValueError(f"ks must be integers in [0, {block.steps}] (the number of blocks deleted), got {bad}")
    gen = torch.Generator().manual_seed(seed)
    states = block.trajectory(stem(x))
    out = torch.empty(len(ks), draws, dtype=torch.float64)
    for i, k in enumerate(ks):
        for d in range(draws):
            gone = {int(j) for j in torch.randperm(block.steps, generator=gen)[:k]}
            start = min(gone) if gone else block.steps
            out[i, d] = _accuracy(head(_run_from(block, states[start], start, gone)), y)
    return out


def relative_updates(model: nn.Module, x: Tensor, *, reduction: str = "mean") -> Tensor:
    """``||x_{k+1} - x_k|| / ||x_k||`` per block along the intact trajectory from ``stem(x)``: shape ``(N,)``
    (mean over samples; ``reduction="none"``: ``(N, B)``)."""
    stem, block, _ = _stack(model)
    states = block.trajectory(stem(x))
    ratios = torch.stack([sample_norms(states[k + 1] - states[k]) / sample_norms(states[k])
                          for k in range(block.steps)])
    if reduction == "mean":
        return ratios.mean(dim=-1)
    if reduction == "none":
        return ratios
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def evenness(values: Tensor | Sequence[float]) -> Evenness:
    """:class:`Evenness` of nonnegative ``values`` (at least one, not all zero)."""
    r = torch.as_tensor(values, dtype=torch.float64).detach().reshape(-1)
    if r.numel() < 1 or not bool(torch.isfinite(r).all()) or bool((r < 0).any()) or float(r.sum()) == 0.0:
        raise ValueError(f"values must be finite, nonnegative and not all zero, got {r.tolist()}")
    n = r.numel()
    p = r / r.sum()
    h = -float((p[p > 0] * p[p > 0].log()).sum())
    entropy = h / math.log(n) if n > 1 else 1.0
    cv = float(r.std(unbiased=False) / r.mean())
    return Evenness(entropy, cv, float(n * p.min()))
