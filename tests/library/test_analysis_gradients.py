"""Gradient flow: per-step norms of dL/dx against closed forms for linear stacks and linear ODEs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LinearField, TimeScaledLinearField
from torch import nn

from odenet import MLPField, ODEBlock, ResidualStack
from odenet.analysis.gradients import gradient_norms, state_gradients
from odenet.models import Classifier

F64 = torch.float64


def w_loss(w: torch.Tensor):
    """The per-sample loss ``w^T x_N``."""
    return lambda out, y: out @ w


@pytest.fixture
def w() -> torch.Tensor:
    return torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)


def expected_norms(steps_maps: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``||(M_{N-1} ... M_k)^T w||`` for ``k = 0..N`` with ``x_{k+1} = M_k x_k``."""
    out, g = [w.norm()], w
    for M in reversed(steps_maps):
        g = M.T @ g
        out.append(g.norm())
    return torch.stack(out[::-1])


def test_euler_stack_matches_product_of_jacobians(A64, x64, w):
    N, T = 6, 1.5
    stack = ResidualStack(LinearField(A64), N, T=T)
    eye = torch.eye(4, dtype=F64)
    expected = expected_norms([eye + (T / N) * A64] * N, w)
    norms = gradient_norms(stack, x64, None, w_loss(w))
    assert norms.shape == (N + 1,)
    torch.testing.assert_close(norms, expected, rtol=1e-12, atol=0)
    per_sample = gradient_norms(stack, x64, None, w_loss(w), reduction="none")
    assert per_sample.shape == (N + 1, 5)
    torch.testing.assert_close(per_sample, expected[:, None].expand(-1, 5), rtol=1e-12, atol=0)
    # "total": the norm of the batch-mean loss' gradient with respect to the whole batch of states
    total = gradient_norms(stack, x64, None, w_loss(w), reduction="total")
    torch.testing.assert_close(total, expected / 5**0.5, rtol=1e-12, atol=0)


def test_plain_net_matches_matrix_powers(A64, x64, w):
    N = 5
    plain = ResidualStack(LinearField(A64), N, shortcut=False)
    expected = torch.stack([torch.linalg.matrix_power(A64.T, N - k) @ w for k in range(N + 1)]).norm(dim=1)
    torch.testing.assert_close(gradient_norms(plain, x64, None, w_loss(w)), expected, rtol=1e-12, atol=0)


def test_rk4_and_learned_steps_states_are_the_step_states(A64, x64, w):
    N, T = 4, 1.0
    eye = torch.eye(4, dtype=F64)
    hA = (T / N) * A64
    R = eye + hA + hA @ hA / 2 + hA @ hA @ hA / 6 + hA @ hA @ hA @ hA / 24  # the rk4 step map of a linear ODE
    rk4 = ResidualStack(LinearField(A64), N, T=T, scheme="rk4")
    expected = expected_norms([R] * N, w)
    torch.testing.assert_close(gradient_norms(rk4, x64, None, w_loss(w)), expected, rtol=1e-12, atol=0)

    learned = ResidualStack(LinearField(A64), N, T=T, learn_steps=True).double()
    with torch.no_grad():
        learned.step_logits.copy_(torch.tensor([0.3, -1.0, 0.8, 0.0]))
    h = learned.step_sizes.detach()
    sg = state_gradients(learned, x64, None, w_loss(w))
    torch.testing.assert_close(sg.times, torch.cat([torch.zeros(1, dtype=F64), h.cumsum(0)]))
    expected = expected_norms([eye + hk * A64 for hk in h], w)
    torch.testing.assert_close(sg.grads.norm(dim=2).mean(dim=1), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("adjoint", [False, True])
def test_ode_block_gradients_at_output_times_match_matrix_exponential(A64, x64, w, adjoint):
    T = 1.2
    block = ODEBlock(LinearField(A64), T=T, solver="dopri5", rtol=1e-10, atol=1e-12, adjoint=adjoint)
    sg = state_gradients(block, x64, None, w_loss(w), times=4)
    torch.testing.assert_close(sg.times, torch.linspace(0, T, 5, dtype=F64))
    expected = torch.stack([torch.linalg.matrix_exp(A64.T * (T - t)) @ w for t in sg.times.tolist()])
    assert sg.grads.shape == (5, 5, 4)
    torch.testing.assert_close(sg.grads, expected[:, None, :].expand(-1, 5, -1), rtol=1e-7, atol=1e-8)
    norms = gradient_norms(block, x64, None, w_loss(w), times=[0.0, 0.3, 1.0])
    want = torch.stack([torch.linalg.matrix_exp(A64.T * (T - t)) @ w for t in (0.0, 0.3, 1.0)]).norm(dim=1)
    torch.testing.assert_close(norms, want, rtol=1e-7, atol=0)


def test_non_autonomous_ode_gradients_use_the_segment_times(A64, x64, w):
    T, omega = 1.0, 3.0
    block = ODEBlock(TimeScaledLinearField(A64, omega), T=T, solver="dopri5", rtol=1e-10, atol=1e-12)
    sg = state_gradients(block, x64, None, w_loss(w), times=[0.0, 0.25, 0.6, 1.0])
    # Phi(T, t) = expm((sin(w T) - sin(w t)) / w A) for dx/dt = cos(w t) A x
    expected = torch.stack([
        torch.linalg.matrix_exp(A64.T * (math.sin(omega * T) - math.sin(omega * t)) / omega) @ w
        for t in (0.0, 0.25, 0.6, 1.0)
    ])
    torch.testing.assert_close(sg.grads, expected[:, None, :].expand(-1, 5, -1), rtol=1e-7, atol=1e-8)


def test_classifier_gradients_are_total_derivatives_and_leave_params_alone():
    torch.manual_seed(0)
    model = Classifier(nn.Linear(3, 4), ResidualStack(MLPField(4, 8, time="concat"), 5, scheme="midpoint"),
                       nn.Linear(4, 3))
    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    sg = state_gradients(model, x, y)
    assert sg.grads.shape == (6, 16, 4)
    assert all(p.grad is None for p in model.parameters())
    z0 = model.stem(x).detach().requires_grad_(True)
    loss = F.cross_entropy(model.head(model.block(z0)), y)
    (g0,) = torch.autograd.grad(loss * 16, z0)  # per-sample gradients of a mean loss
    torch.testing.assert_close(sg.grads[0], g0)
    assert sg.loss == pytest.approx(loss.detach().item())
    zN = model.block(z0).detach().requires_grad_(True)
    (gN,) = torch.autograd.grad(F.cross_entropy(model.head(zN), y, reduction="sum"), zN)
    torch.testing.assert_close(sg.grads[-1], gN)


def test_bad_inputs_raise(A64, x64, w):
    with pytest.raises(TypeError, match="Block"):
        gradient_norms(nn.Linear(4, 4), x64, None)
    stack = ResidualStack(LinearField(A64), 3)
    with pytest.raises(ValueError, match="per-sample"):
        gradient_norms(stack, x64, None, lambda out, y: out)
    with pytest.raises(ValueError, match="reduction"):
        gradient_norms(stack, x64, None, w_loss(w), reduction="max")  # type: ignore[arg-type]
