"""Ott et al.'s Sphere2 protocol, library side: their Conv1d field, Kaiming init and balanced Sphere2 generator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odenet.data import SPHERE2_ANNULI, load_dataset
from odenet.fields import Conv1dField, kaiming_init

# --- Conv1dField ---------------------------------------------------------------------------------------


def test_conv1d_field_parameter_count_by_hand():
    # Conv1d(1, 32, 1): 32 + 32; Conv1d(32, 32, 3): 32*32*3 + 32 = 3104; Conv1d(32, 1, 1): 32 + 1 -> 3201
    field = Conv1dField(2)
    assert [tuple(c.weight.shape) for c in field.convs] == [(32, 1, 1), (32, 32, 3), (1, 32, 1)]
    assert sum(p.numel() for p in field.parameters()) == 64 + 3104 + 33 == 3201
    assert sum(p.numel() for p in Conv1dField(5, hidden=4, kernel=5).parameters()) == 8 + (4 * 4 * 5 + 4) + 5


@pytest.mark.parametrize("shape", [(2,), (7, 2), (3, 4, 2)])
def test_conv1d_field_equals_the_conv_modules(shape):
    """The matrix-product forward is the map the nn.Conv1d modules compute on (batch, 1 channel, length)."""
    torch.manual_seed(0)
    field = Conv1dField(2).double()
    x = torch.randn(*shape, dtype=torch.float64)
    ref = field.convs[2](field.act(field.convs[1](field.act(field.convs[0](x.reshape(-1, 1, 2))))))
    y = field(0.3, x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref.reshape(shape))


def test_conv1d_field_zero_padding_by_hand():
    """hidden=1, kernel=3 on length 2: the middle conv sees (0, h0, h1) -> (w1 h0 + w2 h1, w0 h0 + w1 h1)."""
    field = Conv1dField(2, hidden=1, kernel=3, activation="identity")
    with torch.no_grad():
        for conv in field.convs:
            conv.bias.zero_()
        field.convs[0].weight.fill_(1.0)
        field.convs[1].weight.copy_(torch.tensor([[[2.0, 3.0, 5.0]]]))
        field.convs[2].weight.fill_(1.0)
    y = field(0.0, torch.tensor([[1.0, 10.0]]))
    torch.testing.assert_close(y, torch.tensor([[3 * 1 + 5 * 10, 2 * 1 + 3 * 10]], dtype=torch.float32))


def test_conv1d_field_validation():
    with pytest.raises(ValueError, match="odd"):
        Conv1dField(2, kernel=2)
    with pytest.raises(ValueError):
        Conv1dField(0)


def test_kaiming_init_std_and_zero_biases():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 400), nn.Conv1d(48, 300, 5), nn.BatchNorm1d(3))
    bn_weight = net[2].weight.clone()
    kaiming_init(net)
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    assert net[1].weight.std().item() == pytest.approx(math.sqrt(2 / (48 * 5)), rel=0.02)
    assert abs(net[0].weight.mean().item()) < 0.002
    assert float(net[0].bias.detach().abs().max()) == float(net[1].bias.detach().abs().max()) == 0.0
    torch.testing.assert_close(net[2].weight, bn_weight)  # only conv / linear layers


# --- sphere2_ott -------------------------------------------------------------------------------------


def _rings(x: torch.Tensor) -> torch.Tensor:
    r = x.norm(dim=1)
    ring = torch.full_like(r, -1, dtype=torch.long)
    for k, (r0, r1, _) in enumerate(SPHERE2_ANNULI):
        ring[(r >= r0 - 1e-6) & (r <= r1 + 1e-6)] = k
    return ring


def test_sphere2_ott_ring_counts_are_exact():
    d = load_dataset("sphere2_ott")
    assert (len(d.x_train), len(d.x_test), d.input_shape, d.num_classes) == (2000, 1000, (2,), 2)
    for x, y, n in ((d.x_train, d.y_train, 2000), (d.x_test, d.y_test, 1000)):
        ring = _rings(x)
        assert (ring >= 0).all()  # every point inside its annulus
        assert torch.bincount(ring).tolist() == [n // 4, n // 2, n // 4]
        assert torch.bincount(y).tolist() == [n // 2, n // 2]  # balanced classes
        labels = torch.tensor([lab for _, _, lab in SPHERE2_ANNULI])
        assert torch.equal(y, labels[ring])
    assert len(set(d.y_train[:50].tolist())) == 2  # shuffled: not 500 zeros first


def test_sphere2_ott_radius_law_is_theirs_not_uniform_area():
    """r = r0 + (r1 - r0) sqrt(U): P(r < midpoint) = 1/4; uniform over the area would give 0.477 on [0.25, 0.3]."""
    d = load_dataset("sphere2_ott", n_train=80000, n_test=4)
    r = d.x_train.norm(dim=1)
    middle = r[(r > 0.2) & (r < 0.35)]
    assert len(middle) == 40000
    assert float((middle < 0.275).float().mean()) == pytest.approx(0.25, abs=0.01)


def test_sphere2_ott_sizes_must_be_multiples_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        load_dataset("sphere2_ott", n_train=10)
