"""Vector fields: shapes, time conditioning, depth indexing, augmentation and validation."""

from __future__ import annotations

import pytest
import torch

from odenet import Augment, ConvField, DepthIndexedField, MLPField, augment
from odenet.fields import ACTIVATIONS, make_activation

F64 = torch.float64


# --- MLPField -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (2, 5), (3, 4, 5), (2, 1, 3, 5)])
@pytest.mark.parametrize("time", ["none", "concat"])
def test_mlp_field_keeps_shape(shape, time):
    field = MLPField(5, hidden=7, depth=3, time=time)
    x = torch.randn(*shape)
    y = field(torch.tensor(0.3), x)
    assert y.shape == x.shape and y.dtype == x.dtype
    # Batched evaluation equals row-by-row evaluation.
    flat = field(torch.tensor(0.3), x.reshape(-1, 5)).reshape(shape)
    torch.testing.assert_close(y, flat)


def test_mlp_field_layers_and_time_conditioning():
    auto = MLPField(4, hidden=6, depth=2, time="none").double()
    assert [(lin.in_features, lin.out_features) for lin in auto.linears] == [(4, 6), (6, 6), (6, 4)]
    timed = MLPField(4, hidden=6, depth=2, time="concat").double()
    assert [(lin.in_features, lin.out_features) for lin in timed.linears] == [(5, 6), (7, 6), (7, 4)]
    x = torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(auto(0.0, x), auto(torch.tensor(0.9, dtype=F64), x), rtol=0, atol=0)
    assert (timed(0.0, x) - timed(torch.tensor(0.9, dtype=F64), x)).abs().max() > 1e-6
    # A float t and a 0-dim tensor t give the same result.
    torch.testing.assert_close(timed(0.25, x), timed(torch.tensor(0.25, dtype=F64), x), rtol=0, atol=0)


def test_mlp_field_time_concat_by_hand():
    field = MLPField(2, hidden=3, depth=1, activation="relu", time="concat").double()
    x = torch.randn(4, 2, dtype=F64)
    t = 0.7
    l0, l1 = field.linears
    ones = torch.full((4, 1), t, dtype=F64)
    want = l1(torch.cat([torch.relu(l0(torch.cat([x, ones], -1))), ones], -1))
    torch.testing.assert_close(field(t, x), want, rtol=0, atol=1e-14)


def test_mlp_field_float32_time_tensor_with_float64_state():
    field = MLPField(3, time="concat").double()
    y = field(torch.tensor(0.5, dtype=torch.float32), torch.randn(2, 3, dtype=F64))
    assert y.dtype == F64


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations(name):
    act = make_activation(name)
    assert isinstance(act, torch.nn.Module)
    x = torch.linspace(-2, 2, 9)
    assert act(x).shape == x.shape
    assert make_activation(name) is not act  # a fresh module each time


def test_mlp_field_validation():
    with pytest.raises(ValueError, match="activation"):
        MLPField(3, activation="foo")
    with pytest.raises(ValueError, match="time"):
        MLPField(3, time="sin")
    for kwargs, name in [({"dim": 0}, "dim"), ({"dim": 3, "hidden": 0}, "hidden"), ({"dim": 3, "depth": -1}, "depth"),
                         ({"dim": 2.5}, "dim")]:
        with pytest.raises(ValueError, match=name):
            MLPField(**kwargs)


# --- ConvField ------------------------------------------------------------------------------------


@pytest.mark.parametrize("groupnorm", [False, True])
@pytest.mark.parametrize("time", ["none", "concat"])
def test_conv_field_keeps_image_shape(groupnorm, time):
    field = ConvField(4, hidden=8, depth=3, kernel=3, time=time, groupnorm=groupnorm, groups=4)
    x = torch.randn(2, 4, 6, 5)
    y = field(torch.tensor(0.5), x)
    assert y.shape == (2, 4, 6, 5) and y.dtype == x.dtype
    extra = 1 if time == "concat" else 0
    assert [c.in_channels for c in field.convs] == [4 + extra, 8 + extra, 8 + extra]
    assert [c.out_channels for c in field.convs] == [8, 8, 4]
    norms = [type(n).__name__ for n in field.norms]
    assert norms == (["GroupNorm"] * 3 if groupnorm else ["Identity"] * 3)
    if groupnorm:
        assert [n.num_groups for n in field.norms] == [4, 4, 4]
    differs = (field(torch.tensor(0.0), x) - field(torch.tensor(1.0), x)).abs().max().item()
    assert (differs > 1e-6) == (time == "concat")


def test_conv_field_extra_batch_dims_and_kernel():
    field = ConvField(3, hidden=6, depth=2, kernel=5, groupnorm=True, groups=3)
    x = torch.randn(2, 3, 3, 7, 7)
    y = field(0.1, x)
    assert y.shape == x.shape
    torch.testing.assert_close(y[1, 2], field(0.1, x[1, 2]), rtol=1e-5, atol=1e-6)


def test_conv_field_groupnorm_caps_groups_at_width():
    field = ConvField(2, hidden=16, depth=2, groupnorm=True, groups=8)
    assert [n.num_groups for n in field.norms] == [8, 2]
    assert field(0.0, torch.randn(1, 2, 4, 4)).shape == (1, 2, 4, 4)


def test_conv_field_validation():
    with pytest.raises(ValueError, match="kernel"):
        ConvField(3, kernel=4)
    with pytest.raises(ValueError, match="kernel"):
        ConvField(3, kernel=-1)
    with pytest.raises(ValueError, match="groups"):
        ConvField(4, hidden=6, groupnorm=True, groups=4)
    with pytest.raises(ValueError, match="channels"):
        ConvField(0)
    with pytest.raises(ValueError, match="time"):
        ConvField(3, time="foo")


# --- DepthIndexedField ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("depth", "T"), [(1, 1.0), (5, 0.3), (10, 1.0), (7, 3.7), (64, 2.0)])
def test_depth_index_on_grid_times(dtype, depth, T):
    """Grid times k T / depth, computed as a stack computes them, land on layer k in both precisions."""
    field = DepthIndexedField(lambda: MLPField(2, hidden=2), depth=depth, T=T)
    h = torch.full((depth,), T / depth, dtype=dtype)
    times = torch.arange(depth, dtype=dtype) * h
    assert [field.index(t) for t in times] == list(range(depth))
    # Midpoints of the slices, the end point and times outside [0, T].
    assert [field.index((k + 0.5) * T / depth) for k in range(depth)] == list(range(depth))
    assert field.index(T) == depth - 1
    assert field.index(torch.tensor(-0.5, dtype=dtype)) == 0
    assert field.index(10 * T) == depth - 1


def test_depth_index_just_below_a_boundary_stays_on_the_lower_layer():
    field = DepthIndexedField(lambda: MLPField(2, hidden=2), depth=4, T=1.0)
    assert field.index(torch.tensor(0.25 - 1e-4, dtype=F64)) == 0
    assert field.index(torch.tensor(0.25 - 1e-4, dtype=torch.float32)) == 0
    assert field.index(0.25) == 1


def test_depth_indexed_field_uses_the_right_layer():
    field = DepthIndexedField(lambda: MLPField(3, hidden=4), depth=3, T=1.5).double()
    x = torch.randn(2, 3, dtype=F64)
    for k, t in enumerate([0.1, 0.6, 1.2]):
        torch.testing.assert_close(field(t, x), field.layers[k](t, x), rtol=0, atol=0)
    assert len(list(field.parameters())) == 3 * len(list(field.layers[0].parameters()))
    assert field.layers[0].linears[0].weight is not field.layers[1].linears[0].weight


def test_depth_indexed_field_validation():
    with pytest.raises(ValueError, match="depth"):
        DepthIndexedField(lambda: MLPField(2), depth=0)
    with pytest.raises(ValueError, match="T must"):
        DepthIndexedField(lambda: MLPField(2), depth=2, T=0.0)


# --- augmentation ---------------------------------------------------------------------------------


def test_augment_pads_zeros_on_features():
    x = torch.randn(3, 4, 2)
    y = Augment(3)(x)
    assert y.shape == (3, 4, 5)
    assert torch.equal(y[..., :2], x)
    assert torch.equal(y[..., 2:], torch.zeros(3, 4, 3))
    assert y.dtype == x.dtype


def test_augment_pads_zero_channels_on_images():
    x = torch.randn(2, 3, 4, 4, dtype=F64)
    y = Augment(2, dim=-3)(x)
    assert y.shape == (2, 5, 4, 4) and y.dtype == F64
    assert torch.equal(y[:, :3], x)
    assert torch.count_nonzero(y[:, 3:]) == 0
    assert torch.equal(augment(x, 2, dim=1), y)


def test_augment_zero_extra_is_identity_and_gradients_flow():
    x = torch.randn(2, 3, requires_grad=True)
    assert Augment(0)(x) is x
    Augment(2)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, 3))
    assert "extra=2" in repr(Augment(2))


@pytest.mark.parametrize("extra", [-1, 1.5])
def test_augment_validation(extra):
    with pytest.raises(ValueError, match="extra"):
        Augment(extra)
