"""odenet's own ``dopri5`` (``odenet.adaptive``, ``ODEBlock(backend="odenet")``): torchdiffeq's steps and field
evaluations, outputs and gradients to float tolerance, analytic solutions, many problems at once each with its own
steps, and failures as one clear ``SolverError``."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torch import Tensor, nn

import odenet
from odenet import ODEBlock, SolverError
from odenet.adaptive import AdaptiveSolveError, odeint, odeint_members

F64 = torch.float64


class Recorder:
    """A field that counts its evaluations and records the steps torchdiffeq (or odenet) reports."""

    def __init__(self, field) -> None:
        self.field, self.nfe, self.accepted, self.rejected = field, 0, [], 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted.append(float(dt.detach()))

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1


def both(field, x: Tensor, times: list[float], rtol: float, atol: float):
    """``(torchdiffeq's solution, its Recorder), (ours, its Recorder)`` of the same problem."""
    theirs, ours = Recorder(field), Recorder(field)
    ref = torchdiffeq.odeint(theirs, x, torch.tensor(times, dtype=x.dtype), rtol=rtol, atol=atol, method="dopri5")
    out = odeint(ours, x, times, rtol=rtol, atol=atol)
    return (ref, theirs), (out, ours)


def mlp(seed: int, dim: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return odenet.MLPField(dim, hidden=32, depth=2, activation="tanh", time="concat")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("times", [[0.0, 1.0], [0.0, 0.3, 0.31, 1.0], [1.0, 0.25, 0.0]])
@pytest.mark.parametrize("rtol, dtype", [(1e-3, torch.float32), (1e-6, F64)])  # float32 error estimates at 1e-6
def test_the_steps_and_evaluations_are_torchdiffeqs(seed, times, rtol, dtype):  # are rounding noise: float64 there
    field = mlp(seed).to(dtype)
    x = 2 * torch.randn(128, 3, dtype=dtype)
    (ref, theirs), (out, ours) = both(field, x, times, rtol, rtol / 10)
    assert ours.nfe == theirs.nfe and ours.rejected == theirs.rejected
    assert len(ours.accepted) == len(theirs.accepted)
    # torchdiffeq picks its first step in float32, odenet in double: the steps agree to float32 rounding
    torch.testing.assert_close(torch.tensor(ours.accepted), torch.tensor(theirs.accepted), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_rejected_steps_are_torchdiffeqs_too():
    """A fast rotation started with a large first step: both reject the same steps, then agree."""
    a = torch.tensor([[0.0, 40.0], [-40.0, 0.0]], dtype=F64)
    field = lambda t, x: x @ a.T  # noqa: E731
    x = torch.randn(16, 2, dtype=F64)
    theirs, ours = Recorder(field), Recorder(field)
    ref = torchdiffeq.odeint(theirs, x, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-6, atol=1e-8, method="dopri5",
                             options={"first_step": 0.5})
    out = odeint(ours, x, [0.0, 1.0], rtol=1e-6, atol=1e-8, first_step=0.5)
    assert theirs.rejected > 0 and (ours.nfe, ours.rejected) == (theirs.nfe, theirs.rejected)
    torch.testing.assert_close(torch.tensor(ours.accepted), torch.tensor(theirs.accepted), rtol=1e-9, atol=0.0)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def test_analytic_solutions_to_the_tolerance():
    """``x' = A x`` (a damped rotation): the error at ``T`` falls with the tolerance, like dopri5's in torchdiffeq."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    x = torch.randn(8, 2, dtype=F64)
    exact = x @ torch.linalg.matrix_exp(2.0 * a).T
    errors = []
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        out = odeint(lambda t, y: y @ a.T, x, [0.0, 2.0], rtol=tol, atol=tol)[-1]
        ref = torchdiffeq.odeint(lambda t, y: y @ a.T, x, torch.tensor([0.0, 2.0], dtype=F64), rtol=tol, atol=tol,
                                 method="dopri5")[-1]
        errors.append(float((out - exact).abs().max()))
        assert errors[-1] <= 2 * float((ref - exact).abs().max()) + 1e-15
    assert errors[-1] < 1e-8 and all(b < a / 10 for a, b in zip(errors, errors[1:]))


def test_gradients_agree_with_torchdiffeqs():
    """Backprop through the steps; torchdiffeq also differentiates its first-step choice (odenet holds the
    controller outside autograd), a term of the size of the local error."""
    field = mlp(3).double()
    x = torch.randn(64, 3, dtype=F64)
    grads = []
    for solve in (lambda: torchdiffeq.odeint(field, x, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-7, atol=1e-9,
                                             method="dopri5"),
                  lambda: odeint(field, x, [0.0, 1.0], rtol=1e-7, atol=1e-9)):
        field.zero_grad()
        solve()[-1].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_many_problems_at_once_take_each_its_own_steps():
    """``odeint_members``: member ``m`` of a batched field is ``odeint`` of that member alone, steps, rejections,
    outputs and gradients; the members need different numbers of steps."""
    torch.manual_seed(0)
    k = 3
    w = (torch.randn(k, 3, 3, dtype=F64) * torch.tensor([0.5, 2.0, 6.0], dtype=F64).view(k, 1, 1)).requires_grad_()
    x = torch.randn(k, 32, 3, dtype=F64)
    batched = lambda t, y: torch.tanh(torch.bmm(y, w)) + torch.sin(3 * t) * y  # noqa: E731
    out, steps = odeint_members(batched, x, [0.0, 0.5, 1.0], rtol=1e-6, atol=1e-8, first_step=0.4)
    grad = torch.autograd.grad(out[-1].square().sum(), w)[0]
    assert len({len(s.accepted) for s in steps}) > 1 and any(s.rejected for s in steps)
    for m in range(k):
        alone = Recorder(lambda t, y, m=m: torch.tanh(y @ w[m]) + torch.sin(3 * t) * y)
        own = odeint(alone, x[m], [0.0, 0.5, 1.0], rtol=1e-6, atol=1e-8, first_step=0.4)
        assert (steps[m].nfe, steps[m].rejected) == (alone.nfe, alone.rejected)
        torch.testing.assert_close(torch.tensor(steps[m].accepted, dtype=F64), torch.tensor(alone.accepted, dtype=F64))
        torch.testing.assert_close(out[:, m], own)
        torch.testing.assert_close(grad[m], torch.autograd.grad(own[-1].square().sum(), w)[0][m])


def test_failures_are_raised_as_such():
    field = lambda t, y: 50 * y  # noqa: E731
    with pytest.raises(AdaptiveSolveError, match="max_num_steps") as err:
        odeint(field, torch.ones(4, 2), [0.0, 1.0], rtol=1e-9, atol=1e-9, max_steps=5)
    assert err.value.kind == "max_steps"
    with pytest.raises(AdaptiveSolveError, match="non-finite") as err:
        odeint(lambda t, y: y * float("nan"), torch.ones(4, 2), [0.0, 1.0], rtol=1e-3, atol=1e-4)
    assert err.value.kind == "non-finite"
    with pytest.raises(AdaptiveSolveError, match="underflow"):
        odeint(field, torch.ones(4, 2), [1.0, 2.0], rtol=1e-3, atol=1e-4, first_step=1e-20, max_step=1e-20)


# ---------------------------------------------------------------------------------------------------------------
# ODEBlock(backend="odenet")


def test_the_block_solves_as_torchdiffeqs_with_its_statistics():
    field = mlp(4)
    x = torch.randn(64, 3)
    ours, theirs = ODEBlock(field, backend="odenet"), ODEBlock(field)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    assert ours.stats == theirs.stats and ours.options["backend"] == "odenet" and "backend" not in theirs.options
    torch.testing.assert_close(ours.step_sizes, theirs.step_sizes, rtol=1e-3, atol=1e-6)
    assert math.isclose(float(ours.step_sizes.sum()), 1.0, rel_tol=1e-12)
    torch.testing.assert_close(ours.trajectory(x, 4), theirs.trajectory(x, 4), rtol=1e-4, atol=1e-5)
    assert ours.with_solver("dopri5", rtol=1e-6).backend == "odenet"  # carried to a solver it has ...
    assert ours.with_solver("bosh3").backend == "torchdiffeq"  # ... dropped otherwise
    assert ours.with_solver("dopri5", adjoint=True).backend == "torchdiffeq"
    assert ours.with_solver("dopri5", options={"jump_t": [0.5]}).backend == "torchdiffeq"  # not an option it reads
    assert type(ours.with_solver("rk4", steps=4)).__name__ == "ResidualStack"


def test_the_block_fails_with_a_solver_error_naming_the_setting():
    block = ODEBlock(mlp(5), backend="odenet", max_steps=2, rtol=1e-9, atol=1e-9)
    with pytest.raises(SolverError, match="max_steps=2"):
        block(5 * torch.randn(8, 3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="bosh3"), "solver='bosh3'"),
    (dict(adjoint=True), "adjoint"),
    (dict(options={"step_t": [0.5]}), "step_t"),
    (dict(backend="jax"), "backend must be one of"),
])
def test_what_the_odenet_backend_does_not_do_is_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        ODEBlock(mlp(0), **{"backend": "odenet", **kwargs})
    assert "\n" not in str(err.value) and ("backend='torchdiffeq'" in str(err.value) or "jax" in str(err.value))


def test_calls_the_odenet_backend_cannot_serve_are_refused():
    block = ODEBlock(mlp(0), backend="odenet")
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="backend='torchdiffeq'"):
        block.trajectory(x, torch.tensor([0.0, 1.0], requires_grad=True))
    with pytest.raises(ValueError, match="backend='torchdiffeq'"):
        block.solve_event(x, lambda t, y: y.sum() - 100.0)
    tuple_block = ODEBlock(TupleField(), backend="odenet")
    with pytest.raises(ValueError, match="tensor state"):
        tuple_block((torch.randn(4, 2), torch.randn(4, 2)))


class TupleField(nn.Module):
    def forward(self, t: Tensor, x: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return x[1], -x[0]


@pytest.mark.parametrize("error_control", [True, False])
def test_penalties_ride_along_as_with_torchdiffeq(error_control):
    """Regularised training (kinetic energy integrated with the state): the same steps and penalty as torchdiffeq,
    the penalty channels inside the error norm or (``penalty_error_control=False``) left out of it."""
    field = mlp(6).double()
    x = torch.randn(32, 3, dtype=F64)
    kw = dict(regularizers=("kinetic",), penalty_error_control=error_control, rtol=1e-6, atol=1e-8)
    ours, theirs = ODEBlock(field, backend="odenet", **kw).train(), ODEBlock(field, **kw).train()
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.stats == theirs.stats
    torch.testing.assert_close(ours.regularization["kinetic"], theirs.regularization["kinetic"])


def test_reversed_time_callbacks_and_bad_grids_as_torchdiffeq():
    """Callbacks get the real time on a decreasing grid; an infinite error ratio is a rejected step (torchdiffeq
    shrinks and retries); times must be strictly monotone."""
    field = mlp(7).double()
    x = torch.randn(16, 3, dtype=F64)
    starts = {}
    for name, solve in (("theirs", lambda f: torchdiffeq.odeint(f, x, torch.tensor([1.0, 0.0], dtype=F64),
                                                                 rtol=1e-6, atol=1e-8, method="dopri5")),
                        ("ours", lambda f: odeint(f, x, [1.0, 0.0], rtol=1e-6, atol=1e-8))):
        seen = []
        rec = Recorder(field)
        rec.callback_accept_step = lambda t0, y0, dt, seen=seen: seen.append(float(t0.detach()))  # noqa: B023
        solve(rec)
        starts[name] = seen
    assert starts["ours"][0] == 1.0 and starts["ours"] == pytest.approx(starts["theirs"], rel=1e-9)

    calls = []

    def once_infinite(t: Tensor, y: Tensor) -> Tensor:
        calls.append(1)
        return torch.full_like(y, float("inf")) if len(calls) == 8 else -y  # the first trial step's last stage

    theirs, ours = Recorder(once_infinite), Recorder(once_infinite)
    ref = torchdiffeq.odeint(theirs, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-6,
                             atol=1e-8, method="dopri5")
    calls.clear()
    out = odeint(ours, torch.ones(2, dtype=F64), [0.0, 1.0], rtol=1e-6, atol=1e-8)
    assert ours.nfe == theirs.nfe and ours.rejected == theirs.rejected >= 1
    torch.testing.assert_close(out, ref)
    for bad in ([0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.0]):
        with pytest.raises(ValueError, match="strictly"):
            odeint(field, x, bad, rtol=1e-3, atol=1e-4)
