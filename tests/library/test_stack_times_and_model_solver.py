"""``ResidualStack.trajectory(x, times)`` on the stack's own step times, and swapping the integrator of a
whole model: ``Classifier.with_solver`` for every block kind, ``odenet.with_solver`` for any module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import odenet
from odenet import Block, ODEBlock, ResidualStack
from odenet.models import Classifier, vector_head, vector_stem

F64 = torch.float64


def mlp(dim: int = 3, dtype: torch.dtype = F64) -> nn.Module:
    return odenet.MLPField(dim, hidden=8, depth=2, activation="tanh", time="concat").to(dtype)


@pytest.fixture
def x() -> Tensor:
    return torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(7))


# --- ResidualStack.trajectory(x, times) ------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda f: ResidualStack(f, 8, T=2.0, scheme="rk4"),
    lambda f: ResidualStack(f, 8, T=2.0),
    lambda f: ResidualStack(f, 8, T=2.0, shortcut=False),
], ids=["rk4", "euler", "plain"])
def test_stack_trajectory_on_step_times_is_a_slice(make, x):
    stack = make(mlp())
    full = stack.trajectory(x)
    t = [k * 2.0 / 8 for k in range(9)]
    picked = stack.trajectory(x, times=[t[0], t[2], t[3], t[8]])
    torch.testing.assert_close(picked, full[[0, 2, 3, 8]], rtol=0, atol=0)
    assert stack.nfe == 8 * stack.tableau.stages
    # x is the state at times[0]: from t_3 only the steps after it run.
    later = stack.trajectory(full[3], times=torch.tensor(t[3:7:2], dtype=torch.float32))
    torch.testing.assert_close(later, full[[3, 5]], rtol=0, atol=0)
    assert stack.nfe == 2 * stack.tableau.stages
    torch.testing.assert_close(stack.trajectory(x, times=[t[0]]), full[:1], rtol=0, atol=0)


def test_stack_trajectory_learned_grid(x):
    stack = ResidualStack(mlp(), 4, learn_steps=True).double()
    with torch.no_grad():
        stack.step_logits.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    grid = stack.step_times()
    assert math.isclose(float(grid[-1]), 1.0, rel_tol=1e-12) and len(grid) == 5
    full = stack.trajectory(x)
    torch.testing.assert_close(stack.trajectory(x, times=grid[[0, 2, 4]].tolist()), full[[0, 2, 4]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="nearest step times"):
        stack.trajectory(x, times=[0.0, 0.25])


def test_stack_trajectory_refuses_off_grid_times(x):
    stack = ResidualStack(mlp(), 4)
    with pytest.raises(ValueError, match=r"0\.3 \(nearest step times 0\.25 and 0\.5\)"):
        stack.trajectory(x, times=[0.0, 0.3])
    with pytest.raises(ValueError, match=r"nearest step times 1\b"):
        stack.trajectory(x, times=[0.0, 1.5])
    stack.trajectory(x, times=[0.0, 0.25 + 5e-10])  # within 1e-9
    tenth = ResidualStack(mlp(), 10)
    assert tenth.trajectory(x, times=torch.linspace(0, 1, 11)).shape == (11, 4, 3)  # float32 times: 4 ulps
    with pytest.raises(ValueError, match="increasing"):
        stack.trajectory(x, times=[0.5, 0.25])
    with pytest.raises(ValueError, match="increasing"):
        stack.trajectory(x, times=[0.25, 0.25])
    with pytest.raises(TypeError, match="times"):
        stack.trajectory(x, times=4)
    with pytest.raises(ValueError, match="1-D"):
        stack.trajectory(x, times=[[0.0, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        stack.trajectory(x, times=[0.0, math.nan])


def test_stack_and_ode_block_trajectories_agree_on_the_stack_grid(x):
    """The same field and times, ResNet and torchdiffeq grid: the same classical RK4 states."""
    field = mlp()
    stack = ResidualStack(field, 8, scheme="rk4")
    times = [0.25, 0.5, 1.0]
    start = stack.trajectory(x)[2]
    ode = stack.with_solver("rk4", step_size=0.125)
    torch.testing.assert_close(stack.trajectory(start, times=times), ode.trajectory(start, times), rtol=0,
                               atol=1e-14)


# --- Classifier.with_solver --------------------------------------------------------------------------


BLOCKS = {
    "residual": lambda f: ResidualStack(f, 4),
    "plain": lambda f: ResidualStack(f, 4, shortcut=False),
    "learned": lambda f: ResidualStack(f, 4, learn_steps=True),
    "dopri5": lambda f: ODEBlock(f),
    "fixed_grid": lambda f: ODEBlock(f, solver="rk4", step_size=0.25),
    "adjoint": lambda f: ODEBlock(f, adjoint=True),
}


def classifier(kind: str, amp: torch.dtype | None = None) -> Classifier:
    """A float32 classifier (autocast runs float32 models in reduced precision)."""
    stem, dim = vector_stem(5, 3, 0)
    return Classifier(stem, BLOCKS[kind](mlp(dim, torch.float32)), vector_head(dim, 2), amp_dtype=amp)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_classifier_with_solver_for_every_block_kind(kind):
    model = classifier(kind, amp=torch.bfloat16)
    model.eval()
    old = model.block
    x = torch.randn(3, 5)
    targets = [("euler", {"steps": 8})] if kind == "plain" else [
        ("euler", {"steps": 8}), ("rk4", {"steps": 2}), ("rk4", {"step_size": 0.5}), ("dopri5", {"rtol": 1e-5})]
    for solver, options in targets:
        new = model.with_solver(solver, **options)
        assert new.stem is model.stem and new.head is model.head and new.block.field is model.block.field
        assert new.amp_dtype == torch.bfloat16 and not new.training and not new.block.training
        assert new.block.integrator.name == solver
        assert new(x).shape == (3, 2)
    assert model.block is old


def test_block_with_solver_keeps_the_training_mode():
    block = ResidualStack(mlp(), 4)
    assert block.with_solver("dopri5").training
    block.eval()
    assert not block.with_solver("dopri5").training and not block.with_solver("euler", steps=2).training
    assert not ODEBlock(mlp()).eval().with_solver("bosh3").training


# --- odenet.with_solver(model) -----------------------------------------------------------------------


class Wrapper(nn.Module):
    def __init__(self, block: Block) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(3).double()
        self.ode = block

    def forward(self, x: Tensor) -> Tensor:
        return self.ode(self.norm(x))


def nested(block: Block) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 3).double(), Wrapper(block), nn.Linear(3, 2).double())


def test_model_with_solver_swaps_a_nested_block_in_a_copy():
    field = mlp()
    model = nested(ResidualStack(field, 4))
    model.eval()
    x = torch.randn(6, 5, dtype=F64)
    before = model(x)
    new = odenet.with_solver(model, "rk4", steps=16)
    assert isinstance(new, nn.Sequential) and new is not model and not new.training
    assert isinstance(model[1].ode, ResidualStack) and model[1].ode.scheme == "euler"  # the model is untouched
    assert new[1].ode.scheme == "rk4" and new[1].ode.steps == 16 and new[1].ode.field is field
    assert new[1] is not model[1] and new[0] is model[0] and new[2] is model[2] and new[1].norm is model[1].norm
    assert all(p is q for p, q in zip(new.parameters(), model.parameters()))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    ode = odenet.with_solver(new, "dopri5", rtol=1e-7, atol=1e-9)
    fine = odenet.with_solver(model, "rk4", steps=64)
    torch.testing.assert_close(ode(x), fine(x), rtol=1e-6, atol=1e-7)


def test_model_with_solver_on_a_classifier_a_bare_block_and_a_shared_block():
    model = classifier("residual", amp=torch.bfloat16)
    new = odenet.with_solver(model, "dopri5")
    assert isinstance(new, Classifier) and new.amp_dtype == torch.bfloat16 and isinstance(new.block, ODEBlock)
    assert isinstance(model.block, ResidualStack)
    block = ODEBlock(mlp())
    bare = odenet.with_solver(block, "euler", steps=3)
    assert isinstance(bare, ResidualStack) and bare.field is block.field
    shared = nn.ModuleDict({"a": block, "b": block})
    both = odenet.with_solver(shared, "bosh3")
    assert both["a"] is both["b"] and both["a"].solver == "bosh3" and shared["a"] is block


def test_model_with_solver_needs_exactly_one_block():
    with pytest.raises(ValueError, match="holds no odenet block"):
        odenet.with_solver(nn.Linear(2, 2), "euler", steps=2)
    two = nn.Sequential(ResidualStack(mlp(), 2), ODEBlock(mlp()))
    with pytest.raises(ValueError, match=r"holds 2 odenet blocks \(0, 1\)"):
        odenet.with_solver(two, "euler", steps=2)
    with pytest.raises(TypeError, match="nn.Module"):
        odenet.with_solver(lambda x: x, "euler", steps=2)

    class BlockField(nn.Module):
        """A field that holds a block of its own: it goes with the outer block."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = ResidualStack(mlp(), 2)

        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return self.inner(x)

    outer = nested(ResidualStack(BlockField(), 2))
    new = odenet.with_solver(outer, "rk4", steps=2)
    assert new[1].ode.scheme == "rk4" and new[1].ode.field.inner is outer[1].ode.field.inner
