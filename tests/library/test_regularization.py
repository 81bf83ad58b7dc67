"""Kinetic-energy and Jacobian-Frobenius penalties integrated alongside the state, on known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import CountingField, LinearField
from torch import Tensor, nn

from odenet import ODEBlock, RegularizedDynamics, ResidualStack
from odenet.regularization import hutchinson_noise

DTYPE = torch.float64


class ConstantField(nn.Module):
    """``F(t, x) = c``: kinetic energy ``T ||c||^2``, Jacobian zero."""

    def __init__(self, c: Tensor) -> None:
        super().__init__()
        self.c = nn.Parameter(c.clone())

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.c.expand_as(x)


def _A(seed: int = 0, dim: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(dim, dim, generator=g, dtype=DTYPE)


def _exact_kinetic(A: Tensor, x0: Tensor, T: float, points: int = 4001) -> Tensor:
    """Per-sample ``int_0^T ||A x(t)||^2 dt`` with ``x(t) = expm(A t) x0``, by Simpson on the exact solution."""
    ts = torch.linspace(0, T, points, dtype=DTYPE)
    rates = torch.stack([((x0 @ torch.linalg.matrix_exp(A * t).T) @ A.T).pow(2).sum(1) for t in ts])
    w = torch.ones(points, dtype=DTYPE)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return (w[:, None] * rates).sum(0) * (T / (points - 1)) / 3


def _blocks(field: nn.Module, regs, T: float = 1.0, noise: str = "gaussian"):
    return {
        "euler_stack": ResidualStack(field, steps=8, T=T, regularizers=regs, noise=noise),
        "rk4_stack": ResidualStack(field, steps=8, T=T, scheme="rk4", regularizers=regs, noise=noise),
        "dopri5": ODEBlock(field, T=T, rtol=1e-8, atol=1e-10, regularizers=regs, noise=noise),
        "dopri5_adjoint": ODEBlock(field, T=T, rtol=1e-8, atol=1e-10, adjoint=True, regularizers=regs, noise=noise),
    }


@pytest.mark.parametrize("name", ["euler_stack", "rk4_stack", "dopri5", "dopri5_adjoint"])
def test_constant_field_kinetic_energy_is_T_times_squared_norm(name):
    c = torch.tensor([0.3, -1.2, 2.0], dtype=DTYPE)
    block = _blocks(ConstantField(c), ["kinetic", "jacobian"], T=1.5)[name]
    x0 = torch.randn(5, 3, dtype=DTYPE)
    out = block(x0)
    torch.testing.assert_close(out, x0 + 1.5 * c)  # the state is untouched by the augmentation
    torch.testing.assert_close(block.regularization["kinetic"], 1.5 * c.pow(2).sum())
    assert float(block.regularization["jacobian"].detach()) == 0.0  # dF/dx = 0


def test_linear_field_kinetic_energy_matches_the_exact_integral_and_converges_at_the_scheme_order():
    A, T = _A(), 1.0
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    exact = _exact_kinetic(A, x0, T).mean()
    adaptive = ODEBlock(LinearField(A), T=T, rtol=1e-10, atol=1e-12, regularizers=["kinetic"])
    adaptive(x0)
    torch.testing.assert_close(adaptive.regularization["kinetic"], exact, rtol=1e-7, atol=0)
    for scheme, order in [("euler", 1), ("midpoint", 2), ("rk4", 4)]:
        errors = []
        for n in (8, 16, 32):
            stack = ResidualStack(LinearField(A), steps=n, T=T, scheme=scheme, regularizers=["kinetic"])
            stack(x0)
            errors.append(float((stack.regularization["kinetic"].detach() - exact).abs()))
        observed = np.polyfit(np.log([8, 16, 32]), np.log(errors), 1)[0]
        assert abs(-observed - order) < 0.3, (scheme, errors)


def test_euler_stack_kinetic_energy_is_the_hand_written_sum():
    from odenet import MLPField

    torch.manual_seed(0)
    field = MLPField(3, 16, 2, "tanh", "concat").double()
    stack = ResidualStack(field, steps=5, T=1.0, regularizers=["kinetic"])
    x = torch.randn(6, 3, dtype=DTYPE)
    out = stack(x)
    h, energy, ref = 0.2, torch.zeros(6, dtype=DTYPE), x
    for k in range(5):
        f = field(torch.tensor(k * h, dtype=DTYPE), ref)
        energy = energy + h * f.pow(2).sum(1)
        ref = ref + h * f
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(stack.regularization["kinetic"], energy.mean())


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_linear_field_jacobian_estimate_is_within_its_statistical_error(noise):
    """``||dF/dx||_F^2 = ||A||_F^2`` everywhere; the batch-mean Hutchinson estimate has variance
    ``2 ||A A^T||_F^2 / B`` (Gaussian) or ``2 (||A A^T||_F^2 - sum_i (A A^T)_ii^2) / B`` (Rademacher)."""
    A, T, batch = _A(seed=3), 2.0, 4096
    torch.manual_seed(0)
    block = ResidualStack(LinearField(A), steps=4, T=T, regularizers=["jacobian"], noise=noise)
    block(torch.randn(batch, 3, dtype=DTYPE))
    M = A @ A.T
    var = 2 * (M.pow(2).sum() - (M.diagonal().pow(2).sum() if noise == "rademacher" else 0))
    sigma = T * math.sqrt(float(var) / batch)
    estimate = float(block.regularization["jacobian"].detach())
    assert abs(estimate - T * float(A.pow(2).sum())) < 4 * sigma
    assert sigma < 0.05 * T * float(A.pow(2).sum())  # the check is tight enough to catch a wrong constant


def test_jacobian_of_a_nonlinear_field_matches_the_exact_frobenius_norm_in_expectation():
    """Averaged over many probes, the per-sample estimate matches ||J||_F^2 from torch.autograd.functional."""
    from odenet import MLPField

    torch.manual_seed(0)
    field = MLPField(2, 8, 1, "tanh").double()
    x = torch.randn(1, 2, dtype=DTYPE).expand(20000, 2).contiguous()
    block = ResidualStack(field, steps=1, T=1.0, regularizers=["jacobian"], noise="rademacher")
    block(x)
    J = torch.autograd.functional.jacobian(lambda v: field(0.0, v[None])[0], x[0])
    torch.testing.assert_close(block.regularization["jacobian"], J.pow(2).sum(), rtol=0.02, atol=0)


def test_rademacher_probes_are_signs_and_gaussian_probes_are_normal():
    torch.manual_seed(0)
    r = hutchinson_noise(torch.zeros(10000, dtype=DTYPE), "rademacher")
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(float(r.mean())) < 0.05
    g = hutchinson_noise(torch.zeros(10000, dtype=DTYPE), "gaussian")
    assert abs(float(g.std()) - 1) < 0.05


def test_adjoint_gradients_of_the_penalised_loss_match_direct_backprop():
    from odenet import MLPField

    torch.manual_seed(0)
    field = MLPField(2, 8, 1, "tanh", "concat").double()
    x = torch.randn(16, 2, dtype=DTYPE)
    grads = []
    for adjoint in (False, True):
        block = ODEBlock(field, T=1.0, rtol=1e-9, atol=1e-11, adjoint=adjoint, regularizers=["kinetic", "jacobian"])
        torch.manual_seed(1)  # the same probe in both solves
        out = block(x)
        reg = block.regularization
        loss = out.pow(2).sum() + reg["kinetic"] + reg["jacobian"]
        grads.append(torch.autograd.grad(loss, list(field.parameters())))
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, direct, rtol=1e-5, atol=1e-7)


def test_penalties_are_only_integrated_while_training_with_gradients():
    A = _A()
    counting = CountingField(LinearField(A))
    block = ODEBlock(counting, T=1.0, regularizers=["kinetic"])
    x = torch.randn(4, 3, dtype=DTYPE)
    block.eval()
    block(x)
    assert block.regularization == {}
    block.train()
    with torch.no_grad():
        block(x)
    assert block.regularization == {}
    counting.calls = 0
    block(x)
    assert set(block.regularization) == {"kinetic"}
    assert block.nfe == counting.calls  # the augmented solve counts every field evaluation


def test_regularised_stack_keeps_its_penalties_under_with_solver():
    stack = ResidualStack(LinearField(_A()), steps=4, regularizers=["kinetic"], noise="rademacher")
    swapped = stack.with_solver("dopri5")
    assert swapped.regularizers == ("kinetic",) and swapped.noise == "rademacher"
    assert stack.with_solver("rk4", steps=2).regularizers == ("kinetic",)


def test_bad_regularizer_settings_are_refused_with_the_setting_named():
    field = LinearField(_A())
    with pytest.raises(ValueError, match="regularizers must be among"):
        ResidualStack(field, steps=2, regularizers=["kinetik"])
    with pytest.raises(ValueError, match="noise must be one of"):
        ODEBlock(field, regularizers=["jacobian"], noise="uniform")
    with pytest.raises(ValueError, match="shortcut=True"):
        ResidualStack(field, steps=2, shortcut=False, regularizers=["kinetic"])
    with pytest.raises(ValueError, match="at least one"):
        RegularizedDynamics(field, [])


def test_image_states_are_regularised_too():
    from odenet import ConvField

    torch.manual_seed(0)
    field = ConvField(4, 8, 2, 3, "relu", "concat")
    block = ODEBlock(field, T=1.0, regularizers=["kinetic", "jacobian"])
    x = torch.randn(2, 4, 6, 6)
    out = block(x)
    assert out.shape == x.shape
    assert block.regularization["kinetic"].shape == () and float(block.regularization["kinetic"].detach()) > 0
    (block.regularization["jacobian"] + out.sum()).backward()
    assert all(p.grad is not None for p in field.parameters())


def test_runner_adds_weighted_penalties_and_logs_them_with_solver_statistics(tmp_path):
    import csv

    from odenet.runner.config import load_config
    from odenet.runner.train import train_and_evaluate

    cfg = load_config([
        "+debug=smoke", "block=ode", "solver=dopri5", "solver.adjoint=true", "threads=1", "trainer.log_every=1",
        "regularization.kinetic=0.1", "regularization.jacobian=0.1", "regularization.noise=rademacher",
        "evaluation=none",
    ])
    metrics = train_and_evaluate(cfg, tmp_path)
    assert metrics["status"] == "ok"
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert len(rows) == cfg.trainer.iterations  # one row per iteration
    for row in rows:
        assert float(row["kinetic"]) > 0 and float(row["jacobian"]) > 0
        accepted, rejected = int(row["steps_accepted"]), int(row["steps_rejected"])
        assert int(row["nfe_forward"]) == 2 + 6 * (accepted + rejected)
        assert int(row["nfe_backward"]) == 2 + 6 * (
            int(row["steps_accepted_backward"]) + int(row["steps_rejected_backward"]))
        steps = [float(h) for h in row["step_sizes"].split()]
        assert len(steps) == accepted and abs(sum(steps) - cfg.block.T) < 1e-5


def test_penalties_can_be_left_out_of_the_error_control():
    """With ``penalty_error_control=False`` dopri5 takes exactly the steps of the unpenalised solve (its error
    norm sees the state alone), and the integrals are still accurate to the solver's order."""
    A = _A(seed=5)
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    plain = ODEBlock(LinearField(A), rtol=1e-4, atol=1e-6)
    plain(x0)
    free = ODEBlock(LinearField(A), rtol=1e-4, atol=1e-6, regularizers=["kinetic"], penalty_error_control=False)
    controlled = ODEBlock(LinearField(A), rtol=1e-4, atol=1e-6, regularizers=["kinetic"])
    out = free(x0)
    controlled(x0)
    torch.testing.assert_close(free.step_sizes, plain.step_sizes)
    assert free.nfe == plain.nfe < controlled.nfe
    torch.testing.assert_close(out, plain(x0))
    exact = _exact_kinetic(A, x0, 1.0).mean()
    torch.testing.assert_close(free.regularization["kinetic"].detach(), exact, rtol=1e-3, atol=0)
    assert free.with_solver("dopri5", rtol=1e-6).penalty_error_control is False
