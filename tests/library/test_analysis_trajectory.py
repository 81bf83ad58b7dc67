"""Trajectory statistics: kinetic energy and step speeds on fields with known trajectories."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odenet import DepthIndexedField, MLPField, ODEBlock, ResidualStack
from odenet.analysis.trajectory import kinetic_energy, step_speeds
from odenet.models import Classifier

F64 = torch.float64


class ConstantField(nn.Module):
    """``F(t, x) = c`` for every sample."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = nn.Parameter(c.clone())

    def forward(self, t, x):
        return self.c.expand_as(x)


@pytest.fixture
def c() -> torch.Tensor:
    return torch.tensor([1.5, -2.0, 0.25], dtype=F64)


def constant_blocks(c: torch.Tensor, T: float):
    field = ConstantField(c)
    blocks = {s: ResidualStack(field, 5, T=T, scheme=s) for s in ("euler", "midpoint", "heun", "rk3", "rk4")}
    learned = ResidualStack(field, 5, T=T, learn_steps=True).double()
    with torch.no_grad():
        learned.step_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3]))
    blocks["learned"] = learned
    blocks["dopri5"] = ODEBlock(field, T=T, solver="dopri5")
    return blocks


def test_constant_field_kinetic_energy_and_speeds_are_exact(c):
    T = 1.7
    x = torch.randn(7, 3, dtype=F64)
    for name, block in constant_blocks(c, T).items():
        ke = kinetic_energy(block, x, times=4)
        assert ke.ndim == 0
        torch.testing.assert_close(ke, T * c.norm() ** 2, rtol=1e-12, atol=0, msg=name)
        per_sample = kinetic_energy(block, x, times=4, reduction="none")
        assert per_sample.shape == (7,)
        speeds = step_speeds(block, x, times=4)
        assert speeds.shape == (5 if name != "dopri5" else 4,)
        torch.testing.assert_close(speeds, torch.full_like(speeds, float(c.norm())), rtol=1e-10, atol=0, msg=name)


def test_euler_stack_kinetic_energy_is_the_sum_of_squared_increments():
    torch.manual_seed(0)
    T, N = 2.0, 6
    field = DepthIndexedField(lambda: MLPField(3, 8, time="concat"), N, T=T).double()
    stack = ResidualStack(field, N, T=T)
    model = Classifier(nn.Linear(2, 3).double(), stack, nn.Identity())
    x = torch.randn(10, 2, dtype=F64)
    states = stack.trajectory(model.stem(x)).detach()
    h = T / N
    v = (states[1:] - states[:-1]) / h
    expected = (h * v.pow(2).sum(dim=2)).sum(dim=0).mean()
    with torch.no_grad():
        torch.testing.assert_close(kinetic_energy(model, x), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(step_speeds(model, x), v.norm(dim=2).mean(dim=1), rtol=1e-12, atol=0)
    # differentiable, as a regulariser
    kinetic_energy(model, x).backward()
    assert field.layers[0].linears[0].weight.grad is not None


def test_learned_steps_kinetic_energy_weights_each_step_by_its_size():
    torch.manual_seed(1)
    T, N = 1.5, 5
    stack = ResidualStack(MLPField(3, 8, time="concat"), N, T=T, learn_steps=True).double()
    with torch.no_grad():
        stack.step_logits.copy_(torch.tensor([1.0, -0.5, 0.0, 2.0, -1.0]))
    x = torch.randn(9, 3, dtype=F64)
    with torch.no_grad():
        states = stack.trajectory(x)
        h = stack.step_sizes
        v = (states[1:] - states[:-1]) / h[:, None, None]
        expected = (h[:, None] * v.pow(2).sum(dim=2)).sum(dim=0).mean()
        torch.testing.assert_close(kinetic_energy(stack, x), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(step_speeds(stack, x), v.norm(dim=2).mean(dim=1), rtol=1e-12, atol=0)


def test_plain_net_has_no_kinetic_energy_but_has_step_speeds(c):
    plain = ResidualStack(MLPField(3).double(), 4, shortcut=False)
    x = torch.randn(5, 3, dtype=F64)
    with pytest.raises(ValueError, match="plain net"):
        kinetic_energy(plain, x)
    states = plain.trajectory(x).detach()
    torch.testing.assert_close(step_speeds(plain, x).detach(), (states[1:] - states[:-1]).norm(dim=2).mean(1) * 4)
    with pytest.raises(ValueError, match="reduction"):
        step_speeds(plain, x, reduction="sum")  # type: ignore[arg-type]
