"""odenet.growth: identity insertion keeps an untied ResNet's function exactly, a plain net's does not, and refining
a tied linear field's Euler grid changes the output by the analytic amount."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import odenet
from odenet.fields import DepthIndexedField, LinearField, MLPField
from odenet.growth import (
    fresh_copy,
    insert_steps,
    last_layer,
    refine_grid,
    refinement_errors,
    spread_positions,
    zero_last_layer,
)


def untied(steps: int = 4, shortcut: bool = True, dim: int = 5) -> odenet.ResidualStack:
    """An untied tanh stack at h = 1 (T = steps)."""
    field = DepthIndexedField(lambda: MLPField(dim, 8, 1), steps, float(steps))
    return odenet.ResidualStack(field, steps=steps, T=float(steps), shortcut=shortcut)


def test_spread_positions():
    assert spread_positions(4, 4) == [1, 2, 3, 4]
    assert spread_positions(4, 1) == [2]
    assert spread_positions(3, 2) == [1, 2]
    assert spread_positions(2, 4) == [1, 1, 2, 2]
    with pytest.raises(ValueError):
        spread_positions(4, 0)


@pytest.mark.parametrize("positions", [[0], [4], [2], [1, 2, 3, 4], [2, 2, 2]])
def test_identity_insertion_keeps_the_function_exactly(positions):
    stack = untied()
    x = torch.randn(16, 5)
    grown = insert_steps(stack, positions)
    n = len(positions)
    assert grown.steps == 4 + n and grown.T == 4.0 + n and grown.field.depth == 4 + n
    assert grown.step_sizes.tolist() == [1.0] * (4 + n)  # h = 1 kept
    assert torch.equal(grown(x), stack(x))  # unchanged, bit for bit: x + 1 * 0 = x
    # the inserted layers are zero-output, the others copies of the old ones
    old = iter(stack.field.layers)
    inserted = 0
    for layer in grown.field.layers:
        if sum(p.abs().sum() for p in last_layer(layer).parameters()) == 0:
            inserted += 1
            continue
        ref = next(old)
        assert all(torch.equal(a, b) for a, b in zip(layer.parameters(), ref.parameters()))
        assert all(a is not b for a, b in zip(layer.parameters(), ref.parameters()))
    assert inserted == n


def test_identity_insertion_at_a_step_size_other_than_one():
    field = DepthIndexedField(lambda: MLPField(3, 8, 1), 3, 1.0)
    stack = odenet.ResidualStack(field, steps=3, T=1.0)
    x = torch.randn(8, 3, dtype=torch.float64)
    stack.double()
    grown = insert_steps(stack, [1, 3])
    assert grown.T == pytest.approx(5 / 3) and grown.step_sizes[0].item() == pytest.approx(1 / 3)
    assert torch.allclose(grown(x), stack(x), rtol=0, atol=1e-14)  # h = T/N recomputed: equal to rounding


def test_the_input_stack_is_untouched_and_the_copy_independent():
    stack = untied()
    before = [p.detach().clone() for p in stack.parameters()]
    grown = insert_steps(stack, [2])
    with torch.no_grad():
        for p in grown.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, stack.parameters()))
    assert stack.steps == 4 and stack.T == 4.0


def test_a_plain_nets_inserted_layer_changes_the_function():
    torch.manual_seed(1)
    stack = untied(shortcut=False)
    x = torch.randn(64, 5)
    zero = insert_steps(stack, [2])
    assert not zero.shortcut
    # the zeroed layer maps every input to 0; the rest of the net then gives one constant output
    out = zero(x)
    assert torch.allclose(out, out[:1].expand_as(out))
    z = torch.zeros(1, 5)  # layers 2, 3 of the old net applied to 0
    for layer in list(stack.field.layers)[2:]:
        z = layer(0.0, z)
    assert torch.allclose(out[:1], z)
    assert not torch.allclose(out, stack(x))
    default = insert_steps(stack, [2], init="default")
    assert (default(x) - stack(x)).abs().max() > 1e-3


def test_default_insertion_redraws_the_layer():
    torch.manual_seed(0)
    stack = untied()
    grown = insert_steps(stack, [4], init="default")
    new = grown.field.layers[4]
    assert all(not torch.equal(a, b) for a, b in zip(new.parameters(), stack.field.layers[3].parameters()))
    x = torch.randn(8, 5)
    assert not torch.allclose(grown(x), stack(x))


def test_zero_last_layer_and_fresh_copy():
    f = MLPField(4, 8, 2)
    zero_last_layer(f)
    assert torch.equal(f(0.0, torch.randn(3, 4)), torch.zeros(3, 4))
    lin = LinearField(4)
    fresh = fresh_copy(lin)
    assert fresh.linear.weight.shape == (4, 4) and not torch.equal(fresh.linear.weight, lin.linear.weight)
    with pytest.raises(TypeError, match="last layer"):
        last_layer(nn.Linear(2, 2))


def test_insert_steps_refuses_what_it_cannot_grow():
    tied = odenet.ResidualStack(MLPField(3), steps=4)
    with pytest.raises(ValueError, match="untied"):
        insert_steps(tied, [1])
    with pytest.raises(ValueError, match="0..4"):
        insert_steps(untied(), [5])
    with pytest.raises(ValueError, match="init"):
        insert_steps(untied(), [1], init="orthogonal")
    rk4 = odenet.ResidualStack(DepthIndexedField(lambda: MLPField(3), 2), steps=2, scheme="rk4")
    with pytest.raises(ValueError, match="euler"):
        insert_steps(rk4, [1])
    with pytest.raises(TypeError):
        insert_steps(untied(), 1)  # type: ignore[arg-type]


def euler_power(A: torch.Tensor, T: float, n: int) -> torch.Tensor:
    """``(I + A T / n)^n``: n Euler steps of dx/dt = A x."""
    return torch.linalg.matrix_power(torch.eye(len(A), dtype=A.dtype) + A * T / n, n)


@pytest.mark.parametrize("steps", [2, 4, 16])
def test_refining_a_linear_field_matches_the_analytic_euler_solutions(steps, A64, x64):
    field = LinearField(4).double()
    with torch.no_grad():
        field.linear.weight.copy_(A64)
    stack = odenet.ResidualStack(field, steps=steps, T=1.0)
    fine = refine_grid(stack)
    assert fine.steps == 2 * steps and fine.T == 1.0 and fine.field is not stack.field
    coarse_out = x64 @ euler_power(A64, 1.0, steps).T
    fine_out = x64 @ euler_power(A64, 1.0, 2 * steps).T
    assert torch.allclose(stack(x64), coarse_out, atol=1e-12)
    assert torch.allclose(fine(x64), fine_out, atol=1e-12)
    exact = x64 @ torch.linalg.matrix_exp(A64).T
    out = refinement_errors(stack, fine, x64)

    def mean_norm(v: torch.Tensor) -> float:
        return float(v.norm(dim=1).mean())

    assert out["change"] == pytest.approx(mean_norm(fine_out - coarse_out), rel=1e-9)
    assert out["error_coarse"] == pytest.approx(mean_norm(coarse_out - exact), rel=1e-5)
    assert out["error_fine"] == pytest.approx(mean_norm(fine_out - exact), rel=1e-5)
    assert out["scale"] == pytest.approx(mean_norm(coarse_out), rel=1e-9)


def test_refinement_change_is_half_the_coarse_euler_error_for_small_h():
    """dx/dt = a x: Euler's error is e^a - (1 + a/N)^N = a^2 e^a / (2N) + O(1/N^2); halving h halves it, so the
    change is half the coarse error (ratio -> 1/2, error_fine / error_coarse -> 1/2)."""
    a = -0.8
    field = LinearField(1).double()
    with torch.no_grad():
        field.linear.weight.fill_(a)
    x = torch.ones(1, 1, dtype=torch.float64)
    ratios = []
    for n in (8, 64, 512):
        stack = odenet.ResidualStack(field, steps=n)
        out = refinement_errors(stack, refine_grid(stack), x, rtol=1e-12, atol=1e-14)
        assert out["error_coarse"] == pytest.approx(a * a * torch.exp(torch.tensor(a)).item() / (2 * n), rel=2 / n)
        ratios.append(out["change"] / out["error_coarse"])
        assert out["error_fine"] / out["error_coarse"] == pytest.approx(0.5, abs=2 / n)
    assert ratios[-1] == pytest.approx(0.5, abs=2e-3)
    assert abs(ratios[0] - 0.5) > abs(ratios[-1] - 0.5)  # O(h) correction shrinks


def test_refine_grid_refuses_a_plain_net():
    with pytest.raises(ValueError, match="plain"):
        refine_grid(odenet.ResidualStack(MLPField(3), steps=2, shortcut=False))
    with pytest.raises(ValueError, match="learn"):
        refine_grid(odenet.ResidualStack(MLPField(3), steps=2, learn_steps=True))
