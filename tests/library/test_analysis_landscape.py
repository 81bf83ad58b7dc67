"""Loss landscape: filter normalisation, slices of a quadratic, interpolation endpoints, no mutation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odenet import MLPField, ODEBlock, ResidualStack
from odenet.analysis.landscape import (
    interpolate,
    loss_at,
    normalize_direction,
    random_direction,
    slice_1d,
    slice_2d,
)
from odenet.models import Classifier

F64 = torch.float64


def small_classifier(seed: int = 0, steps: int = 4) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Identity(), ResidualStack(MLPField(2, 8), steps), nn.Linear(2, 3)).double().eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(64, 2, generator=g, dtype=F64), torch.randint(0, 3, (64,), generator=g)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.norm = nn.GroupNorm(1, 5)
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.norm(self.conv(x)).mean(dim=(-2, -1)))


def test_filter_normalisation_matches_weight_filter_norms_and_zeroes_biases():
    model = ConvNet()
    d = random_direction(model, seed=3)
    params = dict(model.named_parameters())
    assert set(d) == set(params)
    for name, p in params.items():
        assert d[name].shape == p.shape
        if p.dim() <= 1:  # conv/linear biases, GroupNorm weight and bias
            assert torch.count_nonzero(d[name]) == 0, name
        else:  # each output filter of the direction has the norm of the weight's filter
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d[name], p.detach())
    layer = random_direction(model, seed=3, norm="layer", ignore_1d=False)
    for name, p in params.items():
        torch.testing.assert_close(layer[name].norm(), p.detach().norm())
    # reproducible, and the global RNG is untouched
    state = torch.random.get_rng_state()
    again = random_direction(model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(d[n], again[n]) for n in d)
    assert not torch.equal(random_direction(model, seed=4)["conv.weight"], d["conv.weight"])


def test_normalize_direction_validates():
    with pytest.raises(ValueError, match="shape"):
        normalize_direction({"w": torch.ones(2, 3)}, {"w": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="norm"):
        normalize_direction({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3)}, norm="unit")  # type: ignore[arg-type]


def test_1d_slice_of_a_quadratic_loss_is_the_analytic_parabola():
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(40, 3, dtype=F64), torch.randn(40, 2, dtype=F64)
    d = random_direction(model, seed=0)
    assert torch.count_nonzero(d["bias"]) == 0
    s = slice_1d(model, x, y, F.mse_loss, direction=d, steps=21, span=(-2.0, 3.0))
    r0 = model(x).detach() - y
    dr = x @ d["weight"].T
    a = s.alphas
    parabola = (r0**2).mean() + 2 * a * (r0 * dr).mean() + a**2 * (dr**2).mean()
    assert s.alphas.shape == s.losses.shape == (21,)
    torch.testing.assert_close(s.alphas[[0, -1]], torch.tensor([-2.0, 3.0], dtype=F64))
    torch.testing.assert_close(s.losses, parabola, rtol=1e-12, atol=1e-12)


def test_2d_slice_is_consistent_with_1d_and_leaves_the_model_unchanged(data):
    x, y = data
    model = small_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d1, d2 = random_direction(model, seed=0), random_direction(model, seed=1)
    s2 = slice_2d(model, x, y, directions=(d1, d2), steps=5)
    assert s2.losses.shape == (5, 5)
    torch.testing.assert_close(s2.losses[2, 2], F.cross_entropy(model(x), y).detach())
    s1 = slice_1d(model, x, y, direction=d1, steps=5)
    torch.testing.assert_close(s2.losses[:, 2], s1.losses)
    looped = slice_2d(model, x, y, directions=(d1, d2), steps=5, vectorize=False)
    torch.testing.assert_close(looped.losses, s2.losses)
    vmapped = slice_2d(model, x, y, directions=(d1, d2), steps=5, vectorize=True, chunk_size=7)  # a stack vmaps
    torch.testing.assert_close(vmapped.losses, s2.losses)
    # the random point equals a model whose weights were actually moved there
    moved = small_classifier()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(-1.0 * d1[name] + 0.5 * d2[name])
    torch.testing.assert_close(s2.losses[0, 3], F.cross_entropy(moved(x), y).detach())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # default directions are seeded
    torch.testing.assert_close(slice_2d(model, x, y, steps=3).losses, slice_2d(model, x, y, steps=3).losses)


def test_interpolation_endpoints_are_the_two_models_losses(data):
    x, y = data
    a, b = small_classifier(0), small_classifier(1)
    arch = small_classifier(2)
    loss_a = F.cross_entropy(a(x), y).detach()
    loss_b = F.cross_entropy(b(x), y).detach()
    s = interpolate(arch, a, b, x, y, steps=5, span=(-0.5, 1.5))
    torch.testing.assert_close(s.alphas, torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], dtype=F64))
    torch.testing.assert_close(s.losses[1], loss_a)
    torch.testing.assert_close(s.losses[3], loss_b)
    mid = small_classifier(3)
    mid.load_state_dict({k: (a.state_dict()[k] + b.state_dict()[k]) / 2 for k in a.state_dict()})
    torch.testing.assert_close(s.losses[2], F.cross_entropy(mid(x), y).detach())
    from_states = interpolate(arch, a.state_dict(), b.state_dict(), x, y, steps=5, span=(-0.5, 1.5))
    torch.testing.assert_close(from_states.losses, s.losses)


def test_ode_block_model_falls_back_to_a_loop(data):
    x, y = data
    torch.manual_seed(0)
    model = Classifier(nn.Identity(), ODEBlock(MLPField(2, 8), solver="dopri5", rtol=1e-5, atol=1e-7),
                       nn.Linear(2, 3)).double()
    d = random_direction(model)
    auto = slice_1d(model, x, y, direction=d, steps=3)
    looped = slice_1d(model, x, y, direction=d, steps=3, vectorize=False)
    torch.testing.assert_close(auto.losses, looped.losses)
    with pytest.raises(Exception):  # noqa: B017 - whatever vmap raises on data-dependent control flow
        slice_1d(model, x, y, direction=d, steps=3, vectorize=True)


def test_loss_at_validates(data):
    x, y = data
    model = small_classifier()
    d = random_direction(model)
    with pytest.raises(ValueError, match="coefficients"):
        loss_at(model, x, y, [d], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="not among"):
        loss_at(model, x, y, [{"nope": torch.zeros(1)}], torch.zeros(3, 1))
    with pytest.raises(ValueError, match="steps"):
        slice_1d(model, x, y, steps=1)
