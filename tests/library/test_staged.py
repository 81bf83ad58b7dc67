"""He et al. (2016)'s staged CIFAR net (``odenet.staged``): known parameter counts, the option-A shortcut, plain vs
residual differing only by the shortcut, the identity block, the pre-activation stack at h = 1."""

from __future__ import annotations

import pytest
import torch

from odenet.fields import DepthIndexedField
from odenet.models import count_parameters
from odenet.stack import ResidualStack
from odenet.staged import BNConvBranch, HeUnit, StagedNet, he_classifier, option_a_shortcut


def hand_count(n: int, in_channels: int = 3, classes: int = 10) -> int:
    """Parameters of He et al.'s 6n+2 net, by hand: 3x3 convs without bias, BN gamma and beta, option A (none)."""
    stem = in_channels * 16 * 9 + 2 * 16
    stage1 = n * (2 * 16 * 16 * 9 + 2 * 2 * 16)
    stage2 = (16 * 32 * 9 + 32 * 32 * 9 + 2 * 2 * 32) + (n - 1) * (2 * 32 * 32 * 9 + 2 * 2 * 32)
    stage3 = (32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64) + (n - 1) * (2 * 64 * 64 * 9 + 2 * 2 * 64)
    return stem + stage1 + stage2 + stage3 + 64 * classes + classes


def test_resnet20_has_he_et_al_s_0_27m_parameters():
    assert hand_count(3) == 269_722  # He et al., Table 6: ResNet-20, 0.27M
    assert hand_count(9) == 853_018  # ResNet-56, 0.85M
    for n in (1, 3, 9):
        for shortcut in (True, False):  # option A adds no parameter: plain and residual nets are the same size
            model = he_classifier(3, 10, n, shortcut=shortcut)
            assert count_parameters(model) == hand_count(n)
            assert model.block.depth == 6 * n + 2 and model.block.steps == 3 * n and model.block.T == 3 * n


def test_stages_halve_the_maps_and_double_the_channels():
    block = StagedNet(2)
    x = torch.randn(2, 16, 32, 32)
    shapes = []
    for stage in block.field:
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert he_classifier(1, 10, 1)(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_option_a_subsamples_and_pads_zero_channels():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = option_a_shortcut(x, 4, 2)
    assert y.shape == (1, 4, 2, 2)
    assert torch.equal(y[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(y[0, 1], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.equal(y[:, 2:], torch.zeros(1, 2, 2, 2))
    assert torch.equal(option_a_shortcut(x, 2, 1), x)
    with pytest.raises(ValueError, match="shrink"):
        option_a_shortcut(x, 1, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_plain_and_residual_differ_only_by_the_shortcut(stride):
    torch.manual_seed(0)
    res = HeUnit(8, 16, stride, shortcut=True)
    plain = HeUnit(8, 16, stride, shortcut=False)
    plain.load_state_dict(res.state_dict())  # the same keys: the shortcut holds no parameter
    x = torch.randn(4, 8, 6, 6)
    f = res.branch(0.0, x)
    assert torch.allclose(plain(x), torch.relu(f))
    assert torch.allclose(res(x), torch.relu(f + option_a_shortcut(x, 16, stride)))
    a, b = he_classifier(1, 10, 2, shortcut=True), he_classifier(1, 10, 2, shortcut=False)
    assert a.state_dict().keys() == b.state_dict().keys()


def test_a_zero_last_bn_gamma_makes_the_block_the_identity():
    unit = HeUnit(8, 8, 1, shortcut=True)
    last = unit.branch.last_norm
    assert last is not None
    torch.nn.init.zeros_(last.weight)
    x = torch.relu(torch.randn(4, 8, 5, 5))  # a block's input follows a ReLU: x >= 0, so ReLU(x + 0) = x
    for mode in (True, False):
        unit.train(mode)
        assert torch.equal(unit(x), x)
    torch.nn.init.ones_(last.weight)
    assert not torch.allclose(unit(x), x)


def test_convs_are_he_initialised():
    torch.manual_seed(0)
    conv = BNConvBranch(64, 64).layers[3]
    std = float(conv.weight.detach().std())
    assert std == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.03)  # N(0, 2 / fan_out), fan_out = 64 * 3 * 3
    assert conv.bias is None


def test_preact_stage_body_is_an_untied_residual_stack_at_h_1():
    torch.manual_seed(0)
    block = StagedNet(3, width=4, preact=True).eval()
    body = block.field[1][1]  # stage 2, after its transition block
    assert isinstance(body, ResidualStack) and isinstance(body.field, DepthIndexedField)
    assert body.steps == 2 and body.T == 2.0 and float(body.step_sizes[0]) == 1.0
    x = torch.randn(2, 8, 4, 4)
    manual = x
    for layer in body.field.layers:
        manual = manual + layer(0.0, manual)  # x_{k+1} = x_k + 1 * F_k(x_k)
    assert torch.allclose(body(x), manual, atol=1e-6)
    plain = StagedNet(3, width=4, preact=True, shortcut=False).field[1][1]
    assert isinstance(plain, ResidualStack) and not plain.shortcut


def test_staged_net_is_its_own_euler_grid_only():
    block = StagedNet(1)
    assert block.with_solver("euler", steps=3) is block
    with pytest.raises(ValueError, match="fixed net"):
        block.with_solver("euler", steps=6)
    with pytest.raises(ValueError, match="fixed net"):
        block.with_solver("rk4")
    with pytest.raises(ValueError, match="change shape"):
        block.trajectory(torch.randn(1, 16, 8, 8))
    block(torch.randn(1, 16, 8, 8))
    assert block.nfe == 3 and block.stats == {"nfe": 3, "nfe_backward": 0, "steps": 3}
