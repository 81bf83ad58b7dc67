"""What a torchdiffeq user relies on, through ``ODEBlock``: one meaning per method name (``rk4`` classical,
``rk4_38`` torchdiffeq's 3/8 rule), solver options, the adjoint's arguments, time grids starting anywhere,
tuple states, events and the documented default tolerances."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torchdiffeq
from torch import Tensor, nn
from torchdiffeq._impl.odeint import SOLVERS

import odenet
from odenet import ODEBlock, ResidualStack, SolverError
from odenet._torchdiffeq import CLASSICAL_RK4, method_options, torchdiffeq_method
from odenet.solvers import ADAPTIVE_SOLVERS, TORCHDIFFEQ_FIXED

F64 = torch.float64
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)


class TimeLinear(nn.Module):
    """``dx/dt = cos(3 t) x A^T``: linear in ``x`` but non-autonomous (an autonomous linear ODE cannot tell the
    4-stage order-4 methods apart: every one of them multiplies by the degree-4 Taylor polynomial of ``hA``)."""

    def __init__(self, w: float = 3.0) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.w = w

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.cos(self.w * torch.as_tensor(t, dtype=x.dtype)) * (x @ self.A.T)


class Autonomous(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return x @ self.A.T


def mlp(dim: int = 2) -> nn.Module:
    return odenet.MLPField(dim, hidden=8, depth=2, activation="tanh", time="concat").to(F64)


def classical_rk4(f: nn.Module, x: Tensor, T: float, steps: int) -> Tensor:
    """Classical RK4 written out (weights 1/6, 1/3, 1/3, 1/6)."""
    h = T / steps
    for k in range(steps):
        t = torch.tensor(k * h, dtype=F64)
        k1 = f(t, x)
        k2 = f(t + h / 2, x + h / 2 * k1)
        k3 = f(t + h / 2, x + h / 2 * k2)
        k4 = f(t + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.fixture
def x() -> Tensor:
    return torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(3))


# --- one meaning per method name -------------------------------------------------------------------


def test_rk4_is_classical_rk4_on_every_path(x):
    f = TimeLinear()
    expected = classical_rk4(f, x, 1.0, 4)
    stack = ResidualStack(f, 4, scheme="rk4")
    paths = {
        "stack": stack(x),
        "ode_block": ODEBlock(f, solver="rk4", step_size=0.25)(x),
        "with_solver steps": ODEBlock(f).with_solver("rk4", steps=4)(x),
        "with_solver step_size": stack.with_solver("rk4", step_size=0.25)(x),
        "make_block": odenet.make_block(f, "rk4", step_size=0.25)(x),
    }
    for name, out in paths.items():
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-14, msg=name)
    # torchdiffeq's 3/8 rule is another method: here it is rk4_38, the same in a stack and on the grid.
    rule38 = ODEBlock(f, solver="rk4_38", step_size=0.25)(x)
    raw = torchdiffeq.odeint(f, x, torch.tensor([0.0, 1.0], dtype=F64), method="rk4", options={"step_size": 0.25})
    torch.testing.assert_close(rule38, raw[-1], rtol=0, atol=0)
    torch.testing.assert_close(ResidualStack(f, 4, scheme="rk4_38")(x), rule38, rtol=0, atol=1e-14)
    assert (rule38 - expected).abs().max() > 1e-5


def test_an_autonomous_linear_ode_cannot_tell_rk4_from_the_38_rule(x):
    f = Autonomous()
    classical = ODEBlock(f, solver="rk4", step_size=0.25)(x)
    torch.testing.assert_close(ODEBlock(f, solver="rk4_38", step_size=0.25)(x), classical, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["euler", "midpoint"])
def test_shared_fixed_names_mean_the_same_method(name, x):
    f = TimeLinear()
    torch.testing.assert_close(ODEBlock(f, solver=name, step_size=0.125)(x),
                               ResidualStack(f, 8, scheme=name)(x), rtol=0, atol=1e-14)


def test_torchdiffeq_keeps_its_own_rk4():
    assert torchdiffeq_method("rk4") == CLASSICAL_RK4 and torchdiffeq_method("rk4_38") == "rk4"
    assert SOLVERS["rk4"].__module__ == "torchdiffeq._impl.fixed_grid"
    assert "rk4_38" in TORCHDIFFEQ_FIXED and "rk4_38" in odenet.SCHEMES


def test_classical_rk4_grid_has_torchdiffeqs_adjoint(x):
    grads = []
    for adjoint in (False, True):
        f = TimeLinear()
        ODEBlock(f, solver="rk4", step_size=0.02, adjoint=adjoint)(x).pow(2).sum().backward()
        grads.append(f.A.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-8)


# --- tolerances --------------------------------------------------------------------------------------


def test_default_tolerances_are_documented_class_constants():
    assert (ODEBlock.DEFAULT_RTOL, ODEBlock.DEFAULT_ATOL) == (1e-3, 1e-4)
    assert (ODEBlock.TORCHDIFFEQ_RTOL, ODEBlock.TORCHDIFFEQ_ATOL) == (1e-7, 1e-9)
    sig = inspect.signature(torchdiffeq.odeint).parameters
    assert (sig["rtol"].default, sig["atol"].default) == (ODEBlock.TORCHDIFFEQ_RTOL, ODEBlock.TORCHDIFFEQ_ATOL)
    block = ODEBlock(mlp())
    assert (block.rtol, block.atol) == (ODEBlock.DEFAULT_RTOL, ODEBlock.DEFAULT_ATOL)
    doc = ODEBlock.__doc__ or ""
    assert "1e-3" in doc and "1e-4" in doc and "1e-7" in doc and "1e-9" in doc


# --- options ---------------------------------------------------------------------------------------


def _init_parameters(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(klass.__init__).parameters)
    return names


@pytest.mark.parametrize("solver", sorted(ADAPTIVE_SOLVERS + TORCHDIFFEQ_FIXED))
def test_every_option_is_one_torchdiffeq_reads(solver):
    accepted = _init_parameters(SOLVERS[torchdiffeq_method(solver)])
    assert set(method_options(solver)) <= accepted


@pytest.mark.parametrize("solver, options, times", [
    ("dopri5", {"first_step": 0.05}, [0.0, 0.3, 1.0]),
    ("dopri5", {"jump_t": [0.5], "safety": 0.8}, [0.0, 1.0]),
    ("bosh3", {"step_t": [0.3, 0.6], "ifactor": 5.0, "dfactor": 0.3}, [0.0, 1.0]),
    ("dopri5", {"norm": lambda z: z.abs().max()}, [0.0, 1.0]),
    ("euler", {"perturb": True}, [0.0, 0.33, 1.0]),
    ("rk4_38", {"interp": "cubic"}, [0.0, 0.33, 1.0]),
    ("implicit_adams", {"max_iters": 6, "max_order": 5}, [0.0, 1.0]),
], ids=["first_step", "jump_t", "step_t", "norm", "perturb", "interp", "adams"])
def test_options_reach_torchdiffeq(solver, options, times, x):
    f = TimeLinear()
    fixed = solver in TORCHDIFFEQ_FIXED
    own = {"step_size": 0.1} if fixed else {}
    tol = {"rtol": 1e-5, "atol": 1e-7} if solver in ADAPTIVE_SOLVERS + ("implicit_adams",) else {}
    block = ODEBlock(f, solver=solver, options=options, **own, **tol)
    grid = torch.tensor(times, dtype=F64)
    raw_options = {**options, **own} if fixed else {**options, "max_num_steps": block.max_steps}
    raw = torchdiffeq.odeint(f, x, grid, method=torchdiffeq_method(solver), options=raw_options,
                             **({"rtol": block.rtol, "atol": block.atol}))
    torch.testing.assert_close(block.trajectory(x, times), raw, rtol=0, atol=0)
    plain = ODEBlock(f, solver=solver, **own, **tol).trajectory(x, times)
    if solver not in ("implicit_adams", "euler"):  # (perturb moves the stage times by one ulp)
        assert not torch.equal(plain, raw)  # the option changed the solve


def test_options_are_checked():
    f = mlp()
    with pytest.raises(ValueError, match=r"unknown options \['foo', 'grid_points'\] for solver 'dopri5'"):
        ODEBlock(f, options={"foo": 1, "grid_points": [0.5]})
    with pytest.raises(ValueError, match=r"unknown options \['first_step'\].*'interp', 'perturb'"):
        ODEBlock(f, solver="euler", step_size=0.1, options={"first_step": 0.1})
    with pytest.raises(ValueError, match="max_steps="):
        ODEBlock(f, options={"max_num_steps": 10})
    with pytest.raises(ValueError, match="step_size="):
        ODEBlock(f, solver="euler", step_size=0.1, options={"step_size": 0.2})
    with pytest.raises(ValueError, match="max_iters"):
        ODEBlock(f, solver="explicit_adams", step_size=0.1, options={"max_iters": 2})  # no corrector to iterate
    with pytest.raises(ValueError, match="first_step"):
        ODEBlock(f, options={"first_step": -1.0})
    with pytest.raises(TypeError, match="perturb"):
        ODEBlock(f, solver="euler", step_size=0.1, options={"perturb": "yes"})
    with pytest.raises(ValueError, match="interp"):
        ODEBlock(f, solver="euler", step_size=0.1, options={"interp": "quadratic"})
    with pytest.raises(TypeError, match="options"):
        ODEBlock(f, options=[("first_step", 0.1)])
    with pytest.raises(ValueError, match="penalty_error_control"):
        ODEBlock(f, regularizers=["kinetic"], options={"norm": lambda z: z.abs().max()})


def test_with_solver_carries_the_options_the_new_method_takes():
    block = ODEBlock(mlp(), options={"first_step": 0.05, "jump_t": [0.5]})
    assert block.with_solver("bosh3").options["options"]["first_step"] == 0.05
    assert "options" not in block.with_solver("euler", step_size=0.1).options
    fixed = ODEBlock(mlp(), solver="euler", step_size=0.1, options={"perturb": True, "interp": "cubic"})
    assert fixed.with_solver("rk4", step_size=0.2).options["options"] == {"perturb": True, "interp": "cubic"}
    again = ODEBlock(block.field, T=block.T, **block.options)
    assert again.options.keys() == block.options.keys()


# --- the adjoint -----------------------------------------------------------------------------------


class External(nn.Module):
    """A field that uses a tensor ``w`` from outside its own parameters."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2).to(F64)
        self.w = w  # a plain attribute: not a parameter of the field

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.w * torch.tanh(self.lin(x))


def _grads(block: ODEBlock, x: Tensor, tensors: list[Tensor]) -> list[Tensor | None]:
    for p in tensors:
        p.grad = None
    block(x).pow(2).sum().backward()
    return [None if p.grad is None else p.grad.clone() for p in tensors]


def test_adjoint_params_give_an_external_tensor_its_gradient(x):
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    field = External(w)
    tensors = [w, *field.parameters()]
    tight = dict(rtol=1e-10, atol=1e-12)
    direct = _grads(ODEBlock(field, **tight), x, tensors)
    adjoint = _grads(ODEBlock(field, adjoint=True, adjoint_params=(*field.parameters(), w), **tight), x, tensors)
    for d, a in zip(direct, adjoint):
        torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-9)
    # As in torchdiffeq, the adjoint returns gradients to adjoint_params only (default: the field's parameters).
    default = _grads(ODEBlock(field, adjoint=True, **tight), x, tensors)
    assert default[0] is None and all(g is not None for g in default[1:])
    only_w = _grads(ODEBlock(field, adjoint=True, adjoint_params=[w], **tight), x, tensors)
    assert only_w[0] is not None and all(g is None for g in only_w[1:])


def test_adjoints_own_method_tolerances_and_options(x):
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)
    field = External(w)
    tensors = [w, *field.parameters()]
    direct = _grads(ODEBlock(field, rtol=1e-10, atol=1e-12), x, tensors)
    params = (*field.parameters(), w)
    variants = {
        "adjoint_rtol": ODEBlock(field, rtol=1e-10, atol=1e-12, adjoint=True, adjoint_params=params,
                                 adjoint_rtol=1e-8, adjoint_atol=1e-10),
        "adjoint_method": ODEBlock(field, rtol=1e-10, atol=1e-12, adjoint=True, adjoint_params=params,
                                   adjoint_method="rk4", adjoint_options={"step_size": 0.05}),
        "seminorm": ODEBlock(field, rtol=1e-10, atol=1e-12, adjoint=True, adjoint_params=params,
                             adjoint_options={"norm": "seminorm"}),
        "fixed forward": ODEBlock(field, solver="rk4", step_size=0.05, adjoint=True, adjoint_params=params,
                                  adjoint_method="dopri5", adjoint_rtol=1e-10, adjoint_atol=1e-12),
    }
    for name, block in variants.items():
        for d, a in zip(direct, _grads(block, x, tensors)):
            torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-7, msg=name)
        assert block.nfe_backward > 0
    assert variants["adjoint_method"].nfe_backward == 4 * 20  # classical RK4 backwards, 20 steps of 0.05


@pytest.mark.parametrize("name, value", [
    ("adjoint_params", ()), ("adjoint_rtol", 1e-5), ("adjoint_atol", 1e-7), ("adjoint_method", "dopri5"),
    ("adjoint_options", {"norm": "seminorm"}),
])
def test_adjoint_arguments_need_adjoint(name, value):
    with pytest.raises(ValueError, match=f"{name} sets the adjoint solve: give adjoint=True"):
        ODEBlock(mlp(), **{name: value})


def test_adjoint_arguments_are_checked():
    f = mlp()
    with pytest.raises(TypeError, match="adjoint_params must be a sequence of tensors"):
        ODEBlock(f, adjoint=True, adjoint_params=torch.zeros(2))
    with pytest.raises(TypeError, match="adjoint_params must hold tensors"):
        ODEBlock(f, adjoint=True, adjoint_params=[1.0])
    with pytest.raises(ValueError, match="adjoint_options=\\{'step_size': h\\}"):
        ODEBlock(f, adjoint=True, adjoint_method="euler")
    with pytest.raises(ValueError, match="adjoint_rtol would be ignored"):
        ODEBlock(f, solver="euler", step_size=0.1, adjoint=True, adjoint_rtol=1e-4)
    with pytest.raises(ValueError, match="unknown adjoint_method"):
        ODEBlock(f, adjoint=True, adjoint_method="rk45")
    with pytest.raises(ValueError, match=r"unknown adjoint_options \['first_stp'\]"):
        ODEBlock(f, adjoint=True, adjoint_options={"first_stp": 0.1})


def test_adjoint_arguments_rebuild_and_carry():
    w = torch.zeros((), dtype=F64, requires_grad=True)
    block = ODEBlock(mlp(), adjoint=True, adjoint_params=[w], adjoint_rtol=1e-6, adjoint_options={"norm": "seminorm"})
    again = ODEBlock(block.field, T=block.T, **block.options)
    assert again.options["adjoint_params"][0] is w and again.adjoint_rtol == 1e-6
    assert "adjoint_params" in repr(block) and "<1 tensors>" in repr(block)
    same = block.with_solver("bosh3")
    assert same.adjoint_params == (w,) and same.adjoint_rtol == 1e-6 and same.adjoint_options == {"norm": "seminorm"}
    direct = block.with_solver("dopri5", adjoint=False)
    assert direct.adjoint_params is None and direct.adjoint_rtol is None
    fixed = block.with_solver("euler", step_size=0.1)
    assert fixed.adjoint_params == (w,) and fixed.adjoint_rtol is None and fixed.adjoint_options is None


# --- time grids ------------------------------------------------------------------------------------


def test_trajectory_starts_at_times0(x):
    f = TimeLinear()
    block = ODEBlock(f, rtol=1e-10, atol=1e-12)
    times = [0.5, 1.0, 2.0]
    raw = torchdiffeq.odeint(f, x, torch.tensor(times, dtype=F64), rtol=1e-10, atol=1e-12,
                             options={"max_num_steps": 10_000})
    torch.testing.assert_close(block.trajectory(x, times), raw, rtol=0, atol=0)
    assert math.isclose(float(block.step_sizes.sum()), 1.5, rel_tol=1e-12)
    # The same states as a trajectory from 0 that passes through 0.5, restarted there.
    empty = block.trajectory(torch.zeros(0, 2, dtype=F64), [0.5, 1.0])  # an empty batch: no solve
    assert empty.shape == (2, 0, 2)
    through = block.trajectory(x, [0.0, 0.5, 1.0, 2.0])
    torch.testing.assert_close(block.trajectory(through[1], [0.5, 1.0, 2.0]), through[1:], rtol=1e-8, atol=1e-9)
    fixed = ODEBlock(f, solver="rk4", step_size=0.25)
    fixed.trajectory(x, [1.0, 2.0])
    assert fixed.stats["steps"] == 4


def test_decreasing_times_integrate_backwards(x):
    f = TimeLinear()
    block = ODEBlock(f, rtol=1e-10, atol=1e-12)
    forward = block.trajectory(x, [0.0, 0.4, 1.0])
    back = block.trajectory(forward[-1], [1.0, 0.4, 0.0])
    torch.testing.assert_close(back, forward.flip(0), rtol=1e-7, atol=1e-8)
    assert math.isclose(float(block.step_sizes.sum()), 1.0, rel_tol=1e-12)
    raw = torchdiffeq.odeint(f, forward[-1], torch.tensor([1.0, 0.4, 0.0], dtype=F64), rtol=1e-10, atol=1e-12,
                             options={"max_num_steps": 10_000})
    torch.testing.assert_close(back, raw, rtol=0, atol=0)
    fixed = ODEBlock(f, solver="rk4", step_size=0.01)
    torch.testing.assert_close(fixed.trajectory(fixed.trajectory(x, [0.0, 1.0])[-1], [1.0, 0.0])[-1], x,
                               rtol=1e-7, atol=1e-8)


def test_gradient_with_respect_to_times(x):
    f = TimeLinear()
    times = torch.tensor([0.0, 0.7], dtype=F64, requires_grad=True)
    out = ODEBlock(f, rtol=1e-10, atol=1e-12).trajectory(x, times)[-1]
    out.sum().backward()
    # d x(t1) / d t1 = F(t1, x(t1)); d x(t1) / d t0 = -Phi(t1, t0) F(t0, x0).
    torch.testing.assert_close(times.grad[1], f(times[1].detach(), out.detach()).sum(), rtol=1e-7, atol=1e-9)


def test_times_are_checked(x):
    block = ODEBlock(mlp())
    for bad in ([0.5], [0.0, 1.0, 0.5], [0.0, math.nan], [0.0, 0.0, 1.0], [[0.0, 1.0]]):
        with pytest.raises(ValueError, match="times"):
            block.trajectory(x, bad)


def test_T_may_be_a_one_element_tensor():
    block = ODEBlock(mlp(), T=torch.tensor(2.0))
    assert block.T == 2.0 and isinstance(block.T, float)
    assert ResidualStack(mlp(), 4, T=torch.tensor([0.5], dtype=F64)).T == 0.5
    assert odenet.make_block(mlp(), "euler", T=torch.tensor(3), steps=2).T == 3.0
    with pytest.raises(ValueError, match="T must not require grad"):
        ODEBlock(mlp(), T=torch.tensor(1.0, requires_grad=True))
    with pytest.raises(TypeError, match="one-element real tensor"):
        ODEBlock(mlp(), T=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="T must be positive"):
        ODEBlock(mlp(), T=torch.tensor(-1.0))


# --- tuple states ----------------------------------------------------------------------------------


class Oscillator(nn.Module):
    """``(p, v)' = (v, -k p - c v)`` on a tuple state of two tensors of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(2.0, dtype=F64))
        self.c = nn.Parameter(torch.tensor(0.1, dtype=F64))

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        p, v = state
        return v.reshape(p.shape), (-self.k * p - self.c * v.reshape(p.shape)).reshape(v.shape)


def _tuple_state() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(4, 3, dtype=F64, generator=g), torch.randn(4, 3, 1, dtype=F64, generator=g)


@pytest.mark.parametrize("make", [
    lambda f: ODEBlock(f, rtol=1e-9, atol=1e-11),
    lambda f: ODEBlock(f, solver="rk4", step_size=0.02),
    lambda f: ODEBlock(f, rtol=1e-9, atol=1e-11, adjoint=True),
    lambda f: ResidualStack(f, 50, scheme="rk4"),
], ids=["dopri5", "rk4_grid", "adjoint", "stack"])
def test_tuple_states(make):
    f = Oscillator()
    block = make(f)
    p0, v0 = (t.requires_grad_() for t in _tuple_state())
    out = block((p0, v0))
    assert isinstance(out, tuple) and out[0].shape == p0.shape and out[1].shape == v0.shape
    raw = torchdiffeq.odeint(f, (p0, v0), torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-9, atol=1e-11)
    for o, r in zip(out, raw):
        torch.testing.assert_close(o, r[-1], rtol=1e-6, atol=1e-8)
    (out[0].sum() + out[1].pow(2).sum()).backward()
    assert p0.grad is not None and v0.grad is not None and f.k.grad is not None
    grads = (p0.grad.clone(), v0.grad.clone(), f.k.grad.clone())
    for t in (p0, v0, f.k, f.c):
        t.grad = None
    (raw[0][-1].sum() + raw[1][-1].pow(2).sum()).backward()
    for g, r in zip(grads, (p0.grad, v0.grad, f.k.grad)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    traj = block.trajectory(tuple(t.detach() for t in (p0, v0)))
    assert isinstance(traj, tuple) and traj[0].shape[1:] == p0.shape and traj[1].shape[1:] == v0.shape


def test_tuple_state_checks_apply_per_tensor():
    p, v = _tuple_state()
    bad = v.clone()
    bad[0, 0, 0] = math.nan
    block = ODEBlock(Oscillator())
    with pytest.raises(odenet.NonFiniteStateError, match=r"initial state x\[1\] is not finite"):
        block((p, bad))
    with pytest.raises(odenet.NonFiniteStateError, match=r"x\[1\]"):
        ResidualStack(Oscillator(), 2)((p, bad))

    class Wrong(nn.Module):
        def forward(self, t, state):
            return state[0], state[1][..., :0]

    for b in (ODEBlock(Wrong()), ResidualStack(Wrong(), 2)):
        with pytest.raises(ValueError, match=r"state x\[1\] of shape \(4, 3, 1\)"):
            b((p, v))

    class Single(nn.Module):
        def forward(self, t, state):
            return state[0]

    with pytest.raises(ValueError, match="tuple state of 2 tensors"):
        ODEBlock(Single())((p, v))
    with pytest.raises(ValueError, match="empty tuple"):
        block(())
    with pytest.raises(ValueError, match="one dtype"):
        block((p, v.float()))
    with pytest.raises(ValueError, match="tensor state"):
        ODEBlock(Oscillator(), regularizers=["kinetic"])((p, v))
    empty = ODEBlock(Oscillator())((p[:0], v[:0]))
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3, 1)


def test_tuple_state_stack_equals_the_stack_of_the_joined_state():
    p, v = _tuple_state()
    f = Oscillator()

    class Joined(nn.Module):
        def forward(self, t, z):
            dp, dv = f(t, (z[:, :3], z[:, 3:].unsqueeze(-1)))
            return torch.cat([dp, dv.squeeze(-1)], dim=1)

    out = ResidualStack(f, 6, scheme="rk4")((p, v))
    joined = ResidualStack(Joined(), 6, scheme="rk4")(torch.cat([p, v.squeeze(-1)], dim=1))
    torch.testing.assert_close(out[0], joined[:, :3], rtol=0, atol=1e-14)
    torch.testing.assert_close(out[1].squeeze(-1), joined[:, 3:], rtol=0, atol=1e-14)


# --- events ----------------------------------------------------------------------------------------

G = 9.81


class Falling(nn.Module):
    """A ball under gravity: ``(height, velocity)' = (velocity, -g)``."""

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return torch.stack([z[..., 1], torch.full_like(z[..., 1], -G)], dim=-1)


def height(t: Tensor, z: Tensor) -> Tensor:
    return z[..., 0]


@pytest.mark.parametrize("make, tol", [
    (lambda: ODEBlock(Falling(), rtol=1e-9, atol=1e-11), 1e-8),
    (lambda: ODEBlock(Falling(), rtol=1e-9, atol=1e-11, adjoint=True, adjoint_params=()), 1e-8),
    (lambda: ODEBlock(Falling(), solver="rk4", step_size=0.01, atol=None), 1e-4),
], ids=["dopri5", "adjoint", "rk4_grid"])
def test_falling_ball_hits_the_ground_on_time(make, tol):
    h0 = torch.tensor([[10.0, 0.0]], dtype=F64, requires_grad=True)
    block = make()
    t_hit, state = block.solve_event(h0, height)
    state = state.detach()
    expected = math.sqrt(2 * 10.0 / G)
    assert abs(float(t_hit.detach()) - expected) < tol
    assert abs(float(state[0, 0])) < 10 * tol and abs(float(state[0, 1]) + G * expected) < 10 * tol * G
    assert block.nfe > 0
    t_hit.backward()  # d t_hit / d h0 = 1 / (g t_hit): the gradient flows through the event time
    assert abs(float(h0.grad[0, 0]) - 1 / (G * expected)) < 1e3 * tol


def test_event_from_another_start_and_backwards_in_time():
    block = ODEBlock(Falling(), rtol=1e-9, atol=1e-11)
    t_star = math.sqrt(2 * 10.0 / G)
    # From the ground at t_star, backwards until the ball is back at 5 m: h(t) = 10 - g t^2 / 2 = 5.
    t_up, state = block.solve_event(torch.tensor([[0.0, -G * t_star]], dtype=F64),
                                    lambda t, z: z[..., 0] - 5.0, t0=t_star, reverse_time=True)
    assert abs(float(t_up) - math.sqrt(10.0 / G)) < 1e-8 and abs(float(state[0, 0]) - 5.0) < 1e-7
    # A tuple state, thrown upwards from t0 = 1: lands after 2 v0 / g.
    class TupleFalling(nn.Module):
        def forward(self, t, state):
            return state[1], torch.full_like(state[1], -G)

    tuple_block = ODEBlock(TupleFalling(), rtol=1e-9, atol=1e-11)
    v0 = 4.0
    t_land, (h, v) = tuple_block.solve_event(
        (torch.full((1,), 1e-12, dtype=F64), torch.full((1,), v0, dtype=F64)), lambda t, s: s[0], t0=1.0)
    assert abs(float(t_land) - (1.0 + 2 * v0 / G)) < 1e-7 and abs(float(v) + v0) < 1e-6


def test_event_failures_and_checks():
    x = torch.tensor([[10.0, 0.0]], dtype=F64)
    with pytest.raises(SolverError, match="max_steps=20"):
        ODEBlock(Falling(), max_steps=20, rtol=1e-9, atol=1e-11).solve_event(x, lambda t, z: 1.0 + 0 * z[..., 0])

    def broken(t, z):
        raise AssertionError("the event function's own bug")

    with pytest.raises(AssertionError, match="own bug"):
        ODEBlock(Falling()).solve_event(x, broken)
    with pytest.raises(TypeError, match="event_fn"):
        ODEBlock(Falling()).solve_event(x, "height")
    with pytest.raises(ValueError, match="non-empty"):
        ODEBlock(Falling()).solve_event(x[:0], height)


# --- the README ------------------------------------------------------------------------------------


def test_readme_torchdiffeq_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### For torchdiffeq users", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)
    namespace = {
        "torch": torch, "odenet": odenet, "field": External(w), "w": w, "x": torch.randn(4, 2, dtype=F64),
        "oscillator": Oscillator(), "p0": _tuple_state()[0], "v0": _tuple_state()[1],
    }
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["states"].shape == (11, 4, 2) and namespace["p"].shape == (4, 3)
    namespace["states"].sum().backward()
    assert w.grad is not None and namespace["t_hit"].ndim == 0
