"""``Block.compile``: a ResidualStack's whole solve compiled in place — one graph per (solver, mode, grad mode),
none recompiled across calls, modes and ``with_solver`` copies; equal to eager; ``state_dict`` keys unchanged."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from odenet import MLPField, ODEBlock, ResidualStack


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _loss_and_grads(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for p in block.parameters():
        p.grad = None
    loss = block(x).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in block.parameters()]


def test_an_ode_block_refuses_to_compile_whole_and_names_the_field():
    block = ODEBlock(MLPField(2, 8), solver="dopri5")
    with pytest.raises(TypeError, match=r"field\.compile\(\)"):
        block.compile()
    assert not block.compiled and ResidualStack(MLPField(2, 8), steps=2).compiled is False


def test_uniform_grid_cache_is_filled_by_eager_calls_only():
    stack = ResidualStack(MLPField(2, 8), steps=3, scheme="midpoint")
    x = torch.randn(4, 2)
    compiled = ResidualStack(MLPField(2, 8), steps=3, scheme="midpoint")
    compiled.compile(backend="eager")  # dynamo traces the solve (no code generation: cheap)
    y = compiled(x)
    assert compiled._grids == {}  # the traced call builds its grid in the graph, not in the cache
    assert torch.allclose(y, compiled.forward(x))  # eager (forward itself, not compiled): the same grid, cached
    assert len(compiled._grids) == 1
    stack(x)
    (grid,) = stack._grids.values()
    assert torch.allclose(torch.stack(grid), torch.tensor([0.0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6]))


@pytest.mark.slow
def test_compiled_stack_matches_eager_without_recompiles():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    field = MLPField(3, 16, depth=2, time="concat")
    eager = ResidualStack(field, steps=4)
    x = torch.randn(32, 3)
    want_loss, want_grads = _loss_and_grads(eager, x)
    with torch.no_grad():
        want_eval = eager.eval()(x)
    eager.train()

    stack = ResidualStack(field, steps=4)
    keys = list(stack.state_dict())
    stack.compile()
    assert stack.compiled and list(stack.state_dict()) == keys
    for _ in range(3):  # the first call compiles; the grid cache must not fail the second call's guards
        loss, grads = _loss_and_grads(stack, x)
    assert _graphs() == 1 and stack.nfe == 4
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)

    stack.eval()
    with torch.no_grad():
        got_eval = stack(x)
    torch.testing.assert_close(got_eval, want_eval, rtol=1e-5, atol=1e-6)
    graphs = _graphs()  # train (grad) and eval (no grad): two graphs
    for _ in range(2):  # switching modes back and forth compiles nothing more
        stack.train()
        _loss_and_grads(stack, x)
        stack.eval()
        with torch.no_grad():
            stack(x)
    assert _graphs() == graphs == 2

    same = stack.with_solver("euler", steps=4)  # a with_solver copy: compiled, and reuses the graphs
    assert same.compiled and not same.training
    with torch.no_grad():
        torch.testing.assert_close(same(x), want_eval, rtol=1e-5, atol=1e-6)
    assert _graphs() == graphs
    rk4 = stack.with_solver("rk4", steps=2)  # another solver: one new graph, compiled once
    for _ in range(3):
        with torch.no_grad():
            out = rk4(x)
    assert rk4.compiled and _graphs() == graphs + 1
    with torch.no_grad():
        torch.testing.assert_close(out, ResidualStack(field, steps=2, scheme="rk4").eval()(x), rtol=1e-5, atol=1e-6)
    assert not stack.with_solver("dopri5").compiled  # an ODEBlock stays eager

    # The compiled block's checkpoint loads into an eager block.
    fresh = ResidualStack(MLPField(3, 16, depth=2, time="concat"), steps=4)
    fresh.load_state_dict(stack.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), want_eval)
