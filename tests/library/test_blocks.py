"""ResidualStack and ODEBlock: equivalence with hand loops, NFE, gradients, solver swaps, validation."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CountingField, LinearField, ShapeChangingField
from torch import nn

from odenet import (
    Augment,
    Block,
    ConvField,
    DepthIndexedField,
    MLPField,
    ODEBlock,
    ResidualStack,
    SolverError,
    make_block,
)

F64 = torch.float64
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk3": 3, "rk4": 4}


def mlp(dim: int = 3, hidden: int = 8, time: str = "concat", dtype: torch.dtype = F64) -> MLPField:
    return MLPField(dim, hidden=hidden, depth=2, activation="tanh", time=time).to(dtype)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = list(a.parameters()), list(b.parameters())
    return len(pa) == len(pb) > 0 and all(p is q for p, q in zip(pa, pb))


# --- the stack is the ResNet ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_euler_stack_equals_hand_written_resnet(T):
    field = mlp()
    x0 = torch.randn(6, 3, dtype=F64)
    N = 7
    h = T / N
    states = [x0]
    x = x0
    for k in range(N):
        x = x + h * field(torch.tensor(k * h, dtype=F64), x)
        states.append(x)
    stack = ResidualStack(field, N, T=T, scheme="euler")
    torch.testing.assert_close(stack(x0), x, rtol=0, atol=1e-12)
    traj = stack.trajectory(x0)
    assert traj.shape == (N + 1, 6, 3)
    torch.testing.assert_close(traj, torch.stack(states), rtol=0, atol=1e-12)
    assert torch.equal(traj[0], x0)
    torch.testing.assert_close(traj[-1], stack(x0), rtol=0, atol=0)


def test_plain_net_equals_hand_loop():
    field = mlp()
    x0 = torch.randn(4, 3, dtype=F64)
    N, T = 5, 1.0
    states, x = [x0], x0
    for k in range(N):
        x = field(torch.tensor(k * T / N, dtype=F64), x)
        states.append(x)
    plain = ResidualStack(field, N, T=T, shortcut=False)
    torch.testing.assert_close(plain(x0), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(plain.trajectory(x0), torch.stack(states), rtol=0, atol=1e-12)
    # ... and differs from the residual net on the same field.
    assert (ResidualStack(field, N, T=T)(x0) - x).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("depth", "T"), [(5, 1.0), (10, 1.0), (5, 0.3)])
def test_depth_indexed_field_is_an_untied_resnet(dtype, depth, T):
    torch.manual_seed(1)
    field = DepthIndexedField(lambda: MLPField(3, hidden=8, time="none"), depth=depth, T=T).to(dtype)
    x0 = torch.randn(4, 3, dtype=dtype)
    h = T / depth
    x = x0
    for k, layer in enumerate(field.layers):
        x = x + h * layer(k * h, x)
    stack = ResidualStack(field, steps=depth, T=T, scheme="euler")
    tol = 1e-12 if dtype == F64 else 1e-6
    torch.testing.assert_close(stack(x0), x, rtol=0, atol=tol)
    # Different weights per layer really matter: the tied ResNet on layer 0 differs.
    tied = ResidualStack(field.layers[0], steps=depth, T=T)
    assert (tied(x0) - x).abs().max() > 1e-3


# --- with_solver shares the field -----------------------------------------------------------------


def test_with_solver_stack_to_stack_shares_field():
    field = mlp()
    old = ResidualStack(field, 8, T=2.0)
    new = old.with_solver("rk4", steps=64)
    assert isinstance(new, ResidualStack)
    assert (new.steps, new.scheme, new.T, new.shortcut) == (64, "rk4", 2.0, True)
    assert new.field is old.field is field
    assert same_parameters(new, old)
    # An update through the new block is seen by the old one.
    x = torch.randn(2, 3, dtype=F64)
    before = old(x).detach()
    with torch.no_grad():
        next(new.parameters()).add_(0.1)
    assert (old(x) - before).abs().max() > 1e-6
    # Without steps the stack keeps its depth.
    assert old.with_solver("midpoint").steps == 8


def test_with_solver_stack_to_ode_shares_field():
    field = mlp()
    old = ResidualStack(field, 8, T=1.5)
    new = old.with_solver("dopri5", rtol=1e-6)
    assert isinstance(new, ODEBlock)
    assert (new.solver, new.rtol, new.T) == ("dopri5", 1e-6, 1.5)
    assert new.field is old.field
    assert same_parameters(new, old)


def test_with_solver_ode_to_stack_and_ode_shares_field():
    field = mlp()
    old = ODEBlock(field, T=0.5, solver="dopri5", rtol=1e-5, atol=1e-7, adjoint=True)
    stack = old.with_solver("euler", steps=8)
    assert isinstance(stack, ResidualStack)
    assert (stack.steps, stack.scheme, stack.T) == (8, "euler", 0.5)
    assert stack.field is old.field
    assert same_parameters(stack, old)
    ode = old.with_solver("bosh3")
    assert isinstance(ode, ODEBlock) and ode.field is field
    assert (ode.solver, ode.rtol, ode.atol, ode.adjoint, ode.T) == ("bosh3", 1e-5, 1e-7, True, 0.5)
    fixed = old.with_solver("rk4", step_size=0.1)
    assert isinstance(fixed, ODEBlock) and fixed.step_size == 0.1 and fixed.field is field


def test_make_block_dispatch():
    field = mlp()
    assert isinstance(make_block(field, "rk4", steps=3), ResidualStack)
    assert isinstance(make_block(field, "dopri5"), ODEBlock)
    ode = make_block(field, "euler", step_size=0.25)
    assert isinstance(ode, ODEBlock) and ode.solver == "euler"
    assert isinstance(ode, Block)
    with pytest.raises(ValueError, match="steps"):
        make_block(field, "euler")
    with pytest.raises(ValueError, match="steps"):
        make_block(field, "dopri5", steps=4)


# --- NFE and statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(STAGES))
def test_stack_nfe_is_exact(scheme):
    field = CountingField(mlp())
    N = 6
    stack = ResidualStack(field, N, scheme=scheme)
    x = torch.randn(2, 3, dtype=F64)
    stack(x)
    assert stack.nfe == STAGES[scheme] * N
    assert field.calls == STAGES[scheme] * N
    assert stack.stats == {"nfe": STAGES[scheme] * N, "nfe_backward": 0, "steps": N}
    field.calls = 0
    stack.trajectory(x)
    assert stack.nfe == field.calls == STAGES[scheme] * N
    assert stack.nfe_backward == 0


def test_plain_and_learned_stack_nfe():
    field = CountingField(mlp())
    plain = ResidualStack(field, 5, shortcut=False)
    plain(torch.randn(2, 3, dtype=F64))
    assert plain.nfe == field.calls == 5
    field.calls = 0
    learned = ResidualStack(field, 5, scheme="rk4", learn_steps=True).double()
    learned(torch.randn(2, 3, dtype=F64))
    assert learned.nfe == field.calls == 20


def test_ode_nfe_matches_field_calls_forward_and_direct_backward():
    field = CountingField(mlp())
    block = ODEBlock(field, solver="dopri5", rtol=1e-6, atol=1e-8)
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    y = block(x)
    assert block.nfe == field.calls > 0
    calls = field.calls
    y.square().sum().backward()
    assert field.calls == calls  # direct backprop does not call the field again
    assert block.nfe_backward == 0
    stats = block.stats
    assert stats["nfe"] == block.nfe and stats["nfe_backward"] == 0
    h = block.step_sizes
    assert stats["steps_accepted"] == len(h) > 0
    assert bool((h > 0).all())
    assert math.isclose(h.sum().item(), 1.0, rel_tol=0, abs_tol=1e-12)
    # dopri5 (FSAL) costs 6 evaluations per attempted step plus 2 for the initial step selection.
    assert block.nfe == 6 * (stats["steps_accepted"] + stats["steps_rejected"]) + 2
    # A second forward resets the count.
    field.calls = 0
    block(x)
    assert block.nfe == field.calls


def test_ode_adjoint_nfe_backward_counts_backward_calls():
    field = CountingField(mlp())
    block = ODEBlock(field, T=2.0, solver="dopri5", rtol=1e-6, atol=1e-8, adjoint=True)
    x = torch.randn(4, 3, dtype=F64, requires_grad=True)
    y = block(x)
    assert block.nfe == field.calls > 0
    assert block.nfe_backward == 0
    forward_calls = field.calls
    y.square().sum().backward()
    assert block.nfe_backward == field.calls - forward_calls > 0
    assert block.nfe == forward_calls
    assert block.stats["nfe_backward"] == block.nfe_backward
    assert math.isclose(block.step_sizes.sum().item(), 2.0, rel_tol=0, abs_tol=1e-12)


@pytest.mark.parametrize("T", [0.7, 3.0])
def test_ode_accepted_steps_partition_the_interval(T):
    block = ODEBlock(mlp(), T=T, solver="bosh3", rtol=1e-5, atol=1e-7)
    block(torch.randn(3, 3, dtype=F64))
    h = block.step_sizes
    assert block.stats["steps_accepted"] == len(h) > 1
    assert bool((h > 0).all())
    assert math.isclose(h.sum().item(), T, rel_tol=1e-12, abs_tol=1e-12)
    # Trajectories up to an earlier time partition that interval instead.
    block.trajectory(torch.randn(3, 3, dtype=F64), times=[0.0, T / 4, T / 2])
    assert math.isclose(block.step_sizes.sum().item(), T / 2, rel_tol=1e-12, abs_tol=1e-12)


def test_fixed_grid_ode_block_stats():
    field = CountingField(mlp())
    block = ODEBlock(field, solver="rk4", step_size=0.25)
    block(torch.randn(2, 3, dtype=F64))
    assert block.nfe == field.calls == 16  # torchdiffeq's rk4: 4 evaluations x 4 steps
    assert "steps_accepted" not in block.stats
    assert len(block.step_sizes) == 0


def test_ode_trajectory():
    block = ODEBlock(mlp(), T=2.0, solver="dopri5", rtol=1e-8, atol=1e-10)
    x = torch.randn(3, 3, dtype=F64)
    traj = block.trajectory(x, times=4)
    assert traj.shape == (5, 3, 3)
    assert torch.equal(traj[0], x)
    torch.testing.assert_close(traj[-1], block(x), rtol=1e-7, atol=1e-9)
    custom = block.trajectory(x, times=[0.0, 0.5, 2.0])
    assert custom.shape == (3, 3, 3)
    torch.testing.assert_close(custom[1], traj[1], rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="times"):
        block.trajectory(x, times=[0.5])  # one time: nothing to integrate (times[0] != 0 is fine: parity tests)
    with pytest.raises(ValueError, match="times"):
        block.trajectory(x, times=[0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="times"):
        block.trajectory(x, times=0)


# --- gradients ------------------------------------------------------------------------------------


def gradcheck_block(block: nn.Module, x: torch.Tensor) -> bool:
    """gradcheck w.r.t. the input and every parameter of ``block`` (via functional_call)."""
    names = [n for n, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in block.named_parameters()]
    assert params, "nothing to check"

    def fn(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))

    return torch.autograd.gradcheck(fn, (x.detach().clone().requires_grad_(True), *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"scheme": "euler"},
        {"scheme": "rk4"},
        {"shortcut": False},
        {"scheme": "euler", "learn_steps": True},
        {"scheme": "midpoint", "learn_steps": True},
    ],
    ids=["euler", "rk4", "plain", "learn_steps", "learn_steps_midpoint"],
)
def test_stack_gradcheck(options):
    block = ResidualStack(mlp(dim=2, hidden=3), steps=3, T=1.0, **options).double()
    assert gradcheck_block(block, torch.randn(2, 2, dtype=F64))


def test_gradcheck_catches_a_wrong_gradient():
    """The gradcheck helper is a real check: a field with a wrong custom backward fails it."""

    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x) * 1.01

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5, dtype=F64))

        def forward(self, t, x):
            return self.w * WrongGrad.apply(x)

    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck_block(ResidualStack(Field(), steps=2), torch.randn(2, 2, dtype=F64))


def test_ode_adjoint_and_direct_gradients_agree():
    field = mlp(dim=3, hidden=6)
    x = torch.randn(4, 3, dtype=F64)
    grads = {}
    for adjoint in (False, True):
        block = ODEBlock(field, T=1.0, solver="dopri5", rtol=1e-12, atol=1e-12, adjoint=adjoint)
        xi = x.clone().requires_grad_(True)
        field.zero_grad()
        loss = (block(xi) ** 2).sum()
        loss.backward()
        grads[adjoint] = [xi.grad.clone()] + [p.grad.clone() for p in field.parameters()]
    for direct, adj in zip(grads[False], grads[True]):
        assert direct.abs().max() > 0
        torch.testing.assert_close(adj, direct, rtol=1e-8, atol=1e-10)


def test_ode_gradient_matches_stack_gradient_in_the_limit():
    """dopri5 gradients ~ those of a fine rk4 stack on the same field (both approximate the ODE's)."""
    field = mlp(dim=2, hidden=4)
    x = torch.randn(3, 2, dtype=F64)
    out = []
    for block in (ODEBlock(field, solver="dopri5", rtol=1e-10, atol=1e-12), ResidualStack(field, 64, scheme="rk4")):
        field.zero_grad()
        (block(x) ** 2).sum().backward()
        out.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    torch.testing.assert_close(out[0], out[1], rtol=1e-6, atol=1e-8)


# --- learned step sizes ---------------------------------------------------------------------------


def test_learned_step_sizes_positive_sum_to_T_and_train():
    T, N = 2.0, 6
    stack = ResidualStack(mlp(), N, T=T, scheme="rk4", learn_steps=True).double()
    h = stack.step_sizes
    assert h.shape == (N,)
    torch.testing.assert_close(h, torch.full((N,), T / N, dtype=F64), rtol=0, atol=1e-14)
    x = torch.randn(16, 3, dtype=F64)
    target = torch.randn(16, 3, dtype=F64)
    loss = ((stack(x) - target) ** 2).mean()
    loss.backward()
    g = stack.step_logits.grad
    assert g is not None and g.abs().max() > 1e-8
    opt = torch.optim.Adam(stack.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        ((stack(x) - target) ** 2).mean().backward()
        opt.step()
    h = stack.step_sizes.detach()
    assert bool((h > 0).all())
    assert math.isclose(h.sum().item(), T, rel_tol=1e-12)
    assert (h - T / N).abs().max() > 1e-4  # the step sizes really moved
    # The times used by the stack follow the learned grid: a hand Euler loop with h_k agrees.
    euler = ResidualStack(stack.field, N, T=T, learn_steps=True).double()
    with torch.no_grad():
        euler.step_logits.copy_(stack.step_logits)
    hs = euler.step_sizes.detach()
    ts = torch.cumsum(hs, 0) - hs
    xe = x
    for k in range(N):
        xe = xe + hs[k] * stack.field(ts[k], xe)
    torch.testing.assert_close(euler(x), xe, rtol=0, atol=1e-12)


def test_fixed_step_sizes():
    stack = ResidualStack(mlp(), 4, T=2.0)
    torch.testing.assert_close(stack.step_sizes, torch.full((4,), 0.5))
    assert not hasattr(stack, "step_logits")
    assert len(list(stack.parameters())) == len(list(stack.field.parameters()))


# --- dtypes and shapes ----------------------------------------------------------------------------


def _blocks(field: nn.Module) -> list[Block]:
    return [
        ResidualStack(field, 3, scheme="euler"),
        ResidualStack(field, 3, scheme="rk4"),
        ResidualStack(field, 3, shortcut=False),
        ResidualStack(field, 3, learn_steps=True),
        ODEBlock(field, solver="dopri5"),
        ODEBlock(field, solver="euler", step_size=0.25),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_keep_input_dtype(dtype):
    field = mlp(dtype=dtype)
    x = torch.randn(5, 3, dtype=dtype)
    for block in _blocks(field):
        block.to(dtype)
        y = block(x)
        assert y.dtype == dtype and y.shape == x.shape, block
        traj = block.trajectory(x)
        assert traj.dtype == dtype and traj.shape[1:] == x.shape, block


def test_float32_and_float64_agree():
    field = mlp(dtype=torch.float32)
    x = torch.randn(5, 3)
    for block in _blocks(field):
        y32 = block.to(torch.float32)(x)
        y64 = block.to(F64)(x.double())
        torch.testing.assert_close(y32.double(), y64, rtol=1e-3, atol=1e-4)


def test_arbitrary_batch_shapes():
    field = mlp()
    x = torch.randn(3, 4, 3, dtype=F64)
    for block in _blocks(field):
        block.double()
        y = block(x)
        assert y.shape == (3, 4, 3), block
        flat = block(x.reshape(12, 3)).reshape(3, 4, 3)
        torch.testing.assert_close(y, flat, rtol=1e-9, atol=1e-10)
    stack = ResidualStack(field, 4)
    assert stack.trajectory(x).shape == (5, 3, 4, 3)
    assert ODEBlock(field).trajectory(x, times=6).shape == (7, 3, 4, 3)


def test_conv_field_blocks_keep_image_shape():
    field = ConvField(4, hidden=8, depth=2, time="concat", groupnorm=True, groups=4).double()
    x = torch.randn(2, 4, 5, 6, dtype=F64)
    for block in (ResidualStack(field, 2, scheme="rk4"), ODEBlock(field, solver="dopri5", rtol=1e-3, atol=1e-4)):
        y = block(x)
        assert y.shape == (2, 4, 5, 6) and y.dtype == F64
        assert block.nfe < 200
        assert (y - x).abs().max() > 1e-4


def test_augmented_ode_block():
    model = nn.Sequential(Augment(2), ODEBlock(mlp(dim=5), solver="dopri5"))
    x = torch.randn(4, 3, dtype=F64)
    assert model(x).shape == (4, 5)


# --- validation -----------------------------------------------------------------------------------


def test_unknown_scheme_and_solver():
    field = mlp()
    with pytest.raises(ValueError, match="scheme"):
        ResidualStack(field, 3, scheme="foo")
    with pytest.raises(ValueError, match="solver"):
        ODEBlock(field, solver="foo")
    with pytest.raises(ValueError, match="solver"):
        ResidualStack(field, 3).with_solver("foo")
    with pytest.raises(ValueError, match="solver"):
        ODEBlock(field).with_solver("foo")


@pytest.mark.parametrize("steps", [0, -2, 2.5, True, "3"])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        ResidualStack(mlp(), steps)


@pytest.mark.parametrize("T", [0, 0.0, -1.0, math.inf, math.nan, "1"])
def test_bad_T(T):
    with pytest.raises(ValueError, match="T must"):
        ResidualStack(mlp(), 3, T=T)
    with pytest.raises(ValueError, match="T must"):
        ODEBlock(mlp(), T=T)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"rtol": 0.0}, "rtol"),
        ({"rtol": -1e-3}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"atol": -1.0}, "atol"),
        ({"solver": "euler", "step_size": 0.0}, "step_size"),
        ({"solver": "rk4", "step_size": -0.1}, "step_size"),
        ({"solver": "rk4"}, "step_size"),
        ({"solver": "euler"}, "step_size"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_step": 0.0}, "max_step"),
        ({"min_step": -1.0}, "min_step"),
    ],
)
def test_bad_ode_options(options, name):
    with pytest.raises(ValueError, match=name):
        ODEBlock(mlp(), **options)


def test_stack_option_conflicts():
    with pytest.raises(ValueError, match="learn_steps"):
        ResidualStack(mlp(), 3, shortcut=False, learn_steps=True)
    with pytest.raises(ValueError, match="shortcut"):
        ResidualStack(mlp(), 3, scheme="rk4", shortcut=False)


def test_field_must_be_a_module():
    with pytest.raises(TypeError, match="field"):
        ResidualStack(lambda t, x: x, 3)
    with pytest.raises(TypeError, match="field"):
        ODEBlock(lambda t, x: x)


@pytest.mark.parametrize(
    "make",
    [
        lambda f: ResidualStack(f, 3),
        lambda f: ResidualStack(f, 3, scheme="rk4"),
        lambda f: ResidualStack(f, 3, learn_steps=True),
        lambda f: ODEBlock(f, solver="dopri5"),
        lambda f: ODEBlock(f, solver="rk4", step_size=0.5),
        lambda f: ODEBlock(f, solver="dopri5", adjoint=True),
    ],
    ids=["euler", "rk4", "learn_steps", "dopri5", "td_rk4", "adjoint"],
)
def test_field_output_shape_mismatch(make):
    block = make(ShapeChangingField(3))
    with pytest.raises(ValueError, match="field returned shape"):
        block(torch.randn(2, 3))


def test_plain_net_field_shape_mismatch():
    with pytest.raises(ValueError, match="field returned shape"):
        ResidualStack(ShapeChangingField(3), 3, shortcut=False)(torch.randn(2, 3))


def test_solver_error_on_max_steps():
    stiff = torch.diag(torch.tensor([-1.0, -50.0, -200.0], dtype=F64))
    block = ODEBlock(LinearField(stiff), solver="dopri5", rtol=1e-8, atol=1e-10, max_steps=2)
    with pytest.raises(SolverError, match="max_steps"):
        block(torch.ones(2, 3, dtype=F64))
    assert issubclass(SolverError, RuntimeError)
    # With enough steps the same solve succeeds and decays.
    ok = ODEBlock(LinearField(stiff), solver="dopri5", rtol=1e-6, atol=1e-8, max_steps=10_000)
    y = ok(torch.ones(2, 3, dtype=F64))
    torch.testing.assert_close(y[:, 0], torch.full((2,), math.exp(-1.0), dtype=F64), rtol=1e-5, atol=1e-7)
    assert ok.stats["steps_accepted"] > 2


# --- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_blocks_match_cpu():
    field = mlp(dtype=F64)
    x = torch.randn(8, 3, dtype=F64)
    for block in _blocks(field):
        block.double()
        want = block(x)
        block.cuda()
        got = block(x.cuda())
        assert got.device.type == "cuda" and got.dtype == F64
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-8)
        got.sum().backward()
        assert all(p.grad is not None and p.grad.device.type == "cuda" for p in block.field.parameters())
        block.cpu()
        block.field.zero_grad(set_to_none=True)


def test_plain_net_refuses_ode_integrators():
    import odenet

    plain = odenet.ResidualStack(odenet.MLPField(2, 8), steps=4, shortcut=False)
    for solver, options in (("dopri5", {}), ("rk4", {"steps": 4}), ("euler", {"step_size": 0.1})):
        with pytest.raises(ValueError, match="shortcut=False"):
            plain.with_solver(solver, **options)
    assert plain.with_solver("euler", steps=8).steps == 8


class _OscillatingField(nn.Module):
    """``F(t, x) = w sin(10 t) x``: dopri5 rejects steps on it, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))

    def forward(self, t, x):
        return self.w * torch.sin(10 * t) * x


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_dopri5_statistics_forward_and_backward_agree_with_a_counting_field(rtol):
    """dopri5 (FSAL) costs 2 evaluations to start and 6 per tried step, accepted or rejected."""
    counting = CountingField(_OscillatingField())
    block = ODEBlock(counting, T=3.0, rtol=rtol, atol=rtol, adjoint=True)
    out = block(torch.randn(4, 2, dtype=torch.float64))
    forward_calls = counting.calls
    out.sum().backward()
    stats = block.stats
    assert stats["nfe"] == forward_calls and stats["nfe_backward"] == counting.calls - forward_calls
    assert stats["steps_rejected"] > 0 and stats["steps_rejected_backward"] > 0
    assert stats["nfe"] == 2 + 6 * (stats["steps_accepted"] + stats["steps_rejected"])
    assert stats["nfe_backward"] == 2 + 6 * (stats["steps_accepted_backward"] + stats["steps_rejected_backward"])
    assert len(block.step_sizes) == stats["steps_accepted"]
    torch.testing.assert_close(block.step_sizes.sum(), torch.tensor(3.0, dtype=torch.float64))


def test_fixed_grid_ode_block_reports_its_step_count():
    field = CountingField(LinearField(torch.eye(2)))
    block = ODEBlock(field, T=1.0, solver="rk4", step_size=0.3)  # steps 0.3, 0.3, 0.3, 0.1
    block(torch.randn(3, 2))
    assert block.stats["steps"] == 4 and block.stats["nfe"] == field.calls == 16
