"""Smoothness in depth of an untied ResNet (a ``DepthIndexedField``) and power-law fits against depth.

A ResNet with one weight set ``theta_k`` per block discretises an ODE only if ``theta_k`` comes
from a function ``theta(t)`` smooth in ``t = k h``: then ``||theta_{k+1} - theta_k|| = O(1/L)``
for ``L`` blocks. Sander et al. (2022, "Do residual neural networks discretize neural ODEs?")
measure the largest increment ``max_k ||theta_{k+1} - theta_k||`` across depths; Cohen et al.
(2021, "Scaling properties of deep residual networks") fit how such quantities scale with ``L``
(a log-log slope of -1: a smooth limit; 0: none; -1/2: a rough, Brownian-like limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..fields import DepthIndexedField

__all__ = ["DepthSmoothness", "PowerLawFit", "depth_increments", "depth_smoothness", "loglog_slope"]


class DepthSmoothness(NamedTuple):
    increments: Tensor
    """``||theta_{k+1} - theta_k||`` for ``k = 0 .. L-2``, shape ``(L-1,)`` (float64)."""
    max: float
    """The largest increment (Sander et al.'s measure); 0 for one layer."""
    rss: float
    """The root-sum-square of the increments, ``sqrt(sum_k ||theta_{k+1} - theta_k||^2)``."""


class PowerLawFit(NamedTuple):
    """``y ~ exp(intercept) x^slope``, fitted by least squares on ``log y = slope log x + intercept``."""

    slope: float
    intercept: float
    r2: float
    """Coefficient of determination of the fit in log-log space (1 for an exact power law)."""


def _layers(field: DepthIndexedField | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(field, DepthIndexedField):
        return list(field.layers)
    if isinstance(field, nn.Module) and not isinstance(field, (nn.ModuleList, nn.Sequential)):
        raise TypeError(
            f"expected a DepthIndexedField (or a sequence of per-step modules), got {type(field).__name__}"
        )
    return list(field)


def _flat(layer: nn.Module) -> Tensor:
    params = [p.detach().reshape(-1).to(torch.float64) for p in layer.parameters()]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float64)


def depth_increments(field: DepthIndexedField | Sequence[nn.Module]) -> Tensor:
    """``||theta_{k+1} - theta_k||_2`` per ``k``, with all parameters of layer ``k`` flattened into ``theta_k``.

    ``field`` is a ``DepthIndexedField`` (its ``layers``) or any sequence of same-shaped modules
    (a list, ``nn.ModuleList`` or ``nn.Sequential``, e.g. the blocks of a ResNet). Returns shape ``(L-1,)``, float64.
    """
    layers = _layers(field)
    if not layers:
        raise ValueError("no layers")
    shapes = [[tuple(p.shape) for p in layer.parameters()] for layer in layers]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("every layer must have the same parameter shapes to compare consecutive layers")
    if len(layers) == 1:
        return torch.zeros(0, dtype=torch.float64)
    theta = torch.stack([_flat(layer) for layer in layers])
    return (theta[1:] - theta[:-1]).norm(dim=1)


def depth_smoothness(field: DepthIndexedField | Sequence[nn.Module]) -> DepthSmoothness:
    """The increments of ``depth_increments`` with their maximum and root-sum-square."""
    inc = depth_increments(field)
    if inc.numel() == 0:
        return DepthSmoothness(inc, 0.0, 0.0)
    return DepthSmoothness(inc, float(inc.max()), float(inc.pow(2).sum().sqrt()))


def loglog_slope(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> PowerLawFit:
    """Least-squares fit of ``log y`` against ``log x`` (e.g. ``max`` increment against depth ``L``).

    Needs at least two distinct positive ``x`` and positive ``y``.
    """
    lx = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    ly = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if lx.shape != ly.shape or lx.numel() < 2:
        raise ValueError(f"x and y must have the same length >= 2, got {lx.numel()} and {ly.numel()}")
    if bool((lx <= 0).any()) or bool((ly <= 0).any()) or not bool(torch.isfinite(lx).all() & torch.isfinite(ly).all()):
        raise ValueError("x and y must be positive and finite for a log-log fit")
    lx, ly = lx.log(), ly.log()
    dx = lx - lx.mean()
    sxx = float(dx.pow(2).sum())
    if sxx == 0.0:
        raise ValueError("x must take at least two distinct values")
    slope = float((dx * (ly - ly.mean())).sum()) / sxx
    intercept = float(ly.mean()) - slope * float(lx.mean())
    residual = ly - (slope * lx + intercept)
    sst = float((ly - ly.mean()).pow(2).sum())
    r2 = 1.0 - float(residual.pow(2).sum()) / sst if sst > 0 else 1.0
    return PowerLawFit(slope, intercept, r2 if math.isfinite(r2) else float("nan"))
