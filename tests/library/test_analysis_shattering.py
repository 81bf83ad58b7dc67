"""Shattered gradients (odenet.analysis.shattering): known answers for the autocorrelation, the spectrum and its
slope, and input gradients along a line checked against finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odenet.analysis import (
    autocorrelation,
    line_gradients,
    line_shattering,
    power_spectrum,
    readout,
    segment_pairs,
    shattering_summary,
    spectral_slope,
)


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_white_noise_is_uncorrelated_with_a_flat_spectrum():
    n = 4096
    for seed in range(3):
        r = autocorrelation(_noise(n, seed), 10)
        assert r[0] == pytest.approx(1.0)
        assert r[1:].abs().max() < 4 / math.sqrt(n)  # ~4 standard errors
        assert abs(spectral_slope(_noise(n, seed))) < 0.15
    s = shattering_summary(_noise(n, 0))
    assert abs(s.lag1) < 0.07 and abs(s.slope) < 0.15 and s.rms == pytest.approx(1.0, abs=0.05)


def test_a_random_walk_is_brown_noise():
    slopes = [spectral_slope(torch.cumsum(_noise(4096, seed), 0)) for seed in range(5)]
    assert sum(slopes) / len(slopes) == pytest.approx(-2.0, abs=0.2)
    for seed in range(3):
        walk = torch.cumsum(_noise(4096, seed), 0)
        assert shattering_summary(walk).lag1 > 0.95


def test_autocorrelation_of_an_alternating_sequence():
    """g = (+1, -1, ...), n = 8: mean 0, r(k) = (-1)^k (n - k) / n (centred); the uncentred cosine is (-1)^k."""
    g = torch.tensor([1.0, -1.0] * 4)
    r = autocorrelation(g, 3)
    assert torch.allclose(r, torch.tensor([1.0, -7 / 8, 6 / 8, -5 / 8], dtype=torch.float64))
    cosine = autocorrelation(g, 3, centered=False)
    assert torch.allclose(cosine, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))
    # vectors per point: two identical components give the same correlation
    assert torch.allclose(autocorrelation(torch.stack([g, g], dim=1), 3), r)


def test_constant_and_zero_sequences():
    assert torch.equal(autocorrelation(torch.full((16,), 3.0), 4), torch.ones(5, dtype=torch.float64))
    assert torch.isnan(autocorrelation(torch.zeros(16), 2)).all()
    assert math.isnan(spectral_slope(torch.full((16,), 3.0)))


def test_power_spectrum_of_a_cosine():
    """cos(2 pi 5 i / n): all its power at f = 5, |DFT|^2 / n = (n / 2)^2 / n = n / 4."""
    n = 64
    i = torch.arange(n, dtype=torch.float64)
    f, p = power_spectrum(torch.cos(2 * math.pi * 5 * i / n) + 2.0)  # the mean is removed
    assert torch.equal(f, torch.arange(1, n // 2 + 1, dtype=torch.float64))
    assert p[4] == pytest.approx(n / 4) and p.sum() == pytest.approx(n / 4)
    # two components: their powers add
    _, p2 = power_spectrum(torch.stack([torch.cos(2 * math.pi * 5 * i / n), torch.sin(2 * math.pi * 3 * i / n)], 1))
    assert p2[4] == pytest.approx(n / 4) and p2[2] == pytest.approx(n / 4) and p2.sum() == pytest.approx(n / 2)


def test_readout_is_a_fixed_unit_projection():
    out = torch.eye(5, dtype=torch.float64)
    u = readout(out, seed=3)
    assert u.norm() == pytest.approx(1.0) and torch.equal(u, readout(out, seed=3))
    assert not torch.equal(u, readout(out, seed=4))
    scalar = torch.arange(4.0)
    assert torch.equal(readout(scalar), scalar) and torch.equal(readout(scalar[:, None]), scalar)


def test_a_linear_model_has_a_constant_gradient():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()
    a, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    lg = line_gradients(model, a, b, points=32, seed=1)
    u = readout(torch.eye(3, dtype=torch.float64), seed=1)
    expected = float((model.weight.detach().T @ u) @ (b - a))  # dy/ds = <W^T u, b - a>
    assert torch.allclose(lg.grads, torch.full((32,), expected, dtype=torch.float64))
    assert torch.equal(lg.s, torch.linspace(0, 1, 32, dtype=torch.float64))
    assert torch.equal(autocorrelation(lg.grads, 5), torch.ones(6, dtype=torch.float64))
    assert shattering_summary(lg.grads).lag1 == 1.0 and math.isnan(shattering_summary(lg.grads).slope)
    assert model.weight.grad is None


def test_line_gradients_match_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    a, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    lg = line_gradients(model, a, b, points=17, seed=2)
    eps = 1e-6

    def y(s: torch.Tensor) -> torch.Tensor:
        return readout(model(a + s[:, None] * (b - a)), seed=2).detach()

    fd = (y(lg.s + eps) - y(lg.s - eps)) / (2 * eps)
    assert torch.allclose(lg.grads, fd, atol=1e-8)
    assert torch.allclose(lg.outputs, y(lg.s))
    full = line_gradients(model, a, b, points=17, mode="full", seed=2)
    assert full.grads.shape == (17, 4) and torch.allclose(full.grads @ (b - a), lg.grads)
    with pytest.raises(ValueError, match="mode"):
        line_gradients(model, a, b, mode="diagonal")  # type: ignore[arg-type]


def test_a_deep_relu_net_shatters_its_gradient_more_than_a_shallow_one():
    """Balduzzi et al.'s Fig. 1 setting (1-D input on [-2, 2], ReLU, He init, small random biases): the lag-1
    autocorrelation falls with depth."""

    def net(depth: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(1, 64)]
        for _ in range(depth):
            layers += [nn.ReLU(), nn.Linear(64, 64)]
        layers += [nn.ReLU(), nn.Linear(64, 1)]
        for m in layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=math.sqrt(2 / m.in_features))
                nn.init.normal_(m.bias, std=0.1)
        return nn.Sequential(*layers)

    def lag1(depth: int) -> float:
        vals = []
        for seed in range(4):
            torch.manual_seed(seed)
            g = line_gradients(net(depth), torch.tensor([-2.0]), torch.tensor([2.0]), points=256).grads
            vals.append(shattering_summary(g).lag1)
        return sum(vals) / len(vals)

    assert lag1(1) > 0.85 and lag1(24) < lag1(1) - 0.1


def test_segment_pairs_and_line_shattering():
    y = torch.tensor([0, 0, 1, 1, 2, 0])
    assert segment_pairs(y, 8) == [(0, 2), (3, 4)]
    assert segment_pairs(y, 1) == [(0, 2)]
    assert segment_pairs(torch.zeros(4), 3) == []
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(6, 3)
    s = line_shattering(model, x, y, lines=2, points=64, max_lag=8)
    assert s.pairs == [(0, 2), (3, 4)] and len(s.lag1) == len(s.slope) == len(s.rms) == 2
    assert s.autocorrelation.shape == (9,) and s.autocorrelation[0] == pytest.approx(1.0)
    assert s.power.shape == s.frequencies.shape == (32,) and s.power.sum() == pytest.approx(1.0)
    assert torch.allclose(s.example, line_gradients(model, x[0], x[2], points=64).grads.double())
    with pytest.raises(ValueError, match="different targets"):
        line_shattering(model, x, torch.zeros(6))
