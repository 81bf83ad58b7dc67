"""Smoothness in depth: increments of known per-layer weights, and power-law slopes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odenet import DepthIndexedField, MLPField
from odenet.analysis.depth import depth_increments, depth_smoothness, loglog_slope


def field_with_layers(depth: int, scale) -> tuple[DepthIndexedField, float]:
    """Layer ``k`` of a 2-layer MLP field has every parameter equal to ``scale(k) * c``; returns (field, ||c||)."""
    field = DepthIndexedField(lambda: MLPField(3, 5, depth=1), depth)
    g = torch.Generator().manual_seed(0)
    c = [torch.randn(p.shape, generator=g) for p in field.layers[0].parameters()]
    with torch.no_grad():
        for k, layer in enumerate(field.layers):
            for p, ck in zip(layer.parameters(), c):
                p.copy_(scale(k) * ck)
    return field, float(torch.cat([ck.reshape(-1) for ck in c]).double().norm())


def test_linear_in_depth_weights_have_constant_increments():
    L = 6
    field, c = field_with_layers(L, lambda k: float(k))
    inc = depth_increments(field)
    assert inc.shape == (L - 1,) and inc.dtype == torch.float64
    torch.testing.assert_close(inc, torch.full((L - 1,), c, dtype=torch.float64), rtol=1e-6, atol=0)
    s = depth_smoothness(field)
    assert s.max == pytest.approx(c, rel=1e-6)
    assert s.rss == pytest.approx(math.sqrt(L - 1) * c, rel=1e-6)
    # quadratic in depth: increments (2k + 1) c
    field, c = field_with_layers(4, lambda k: float(k * k))
    torch.testing.assert_close(depth_increments(field), torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64) * c,
                               rtol=1e-6, atol=0)


def test_smooth_weights_give_slope_minus_one_in_depth():
    depths = [4, 8, 16, 32, 64]
    maxima, c = [], None
    for L in depths:
        field, c = field_with_layers(L, lambda k, L=L: k / L)  # theta_k = theta(k h), theta(t) = t c
        maxima.append(depth_smoothness(field).max)
    fit = loglog_slope(depths, maxima)
    assert fit.slope == pytest.approx(-1.0, abs=1e-6)
    assert fit.intercept == pytest.approx(math.log(c), abs=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


def test_loglog_slope_of_an_exact_power_law_and_validation():
    x = torch.tensor([2.0, 3.0, 10.0, 50.0], dtype=torch.float64)
    fit = loglog_slope(x, 3.0 * x**2.5)
    assert fit.slope == pytest.approx(2.5) and fit.intercept == pytest.approx(math.log(3.0))
    assert fit.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="length"):
        loglog_slope([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        loglog_slope([2.0, 2.0], [1.0, 3.0])


def test_layers_as_a_sequence_and_bad_inputs():
    layers = [nn.Linear(2, 2) for _ in range(3)]
    expected = torch.stack([
        torch.cat([(b.weight - a.weight).reshape(-1), b.bias - a.bias]).norm() for a, b in zip(layers, layers[1:])
    ]).double().detach()
    torch.testing.assert_close(depth_increments(layers), expected)
    torch.testing.assert_close(depth_increments(nn.ModuleList(layers)), expected)
    one = depth_smoothness(DepthIndexedField(lambda: nn.Linear(2, 2), 1))
    assert one.increments.numel() == 0 and one.max == 0.0 and one.rss == 0.0
    with pytest.raises(ValueError, match="same parameter shapes"):
        depth_increments([nn.Linear(2, 2), nn.Linear(2, 3)])
    with pytest.raises(TypeError, match="DepthIndexedField"):
        depth_increments(MLPField(2))  # type: ignore[arg-type]
