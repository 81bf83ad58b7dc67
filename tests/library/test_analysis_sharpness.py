"""Sharpness: power iteration and Hutchinson's trace on Hessians with known spectra."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from odenet import MLPField, ODEBlock, ResidualStack
from odenet.analysis.sharpness import hessian_trace, hessian_vector_product, top_hessian_eigenvalue
from odenet.models import Classifier

F64 = torch.float64


def spd(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=F64))
    return Q @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ Q.T


def quadratic(A: torch.Tensor):
    theta = torch.randn(A.shape[0], dtype=F64, requires_grad=True)
    return (lambda: 0.5 * theta @ A @ theta), [theta]


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    A = spd([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, -0.2, 0.0])
    loss, params = quadratic(A)
    est = top_hessian_eigenvalue(loss, params=params, tol=1e-10, max_iters=500)
    assert est.converged and 1 < est.iterations < 500
    assert est.eigenvalue == pytest.approx(5.0, rel=1e-6)
    loose = top_hessian_eigenvalue(loss, params=params, tol=1e-2)
    assert loose.iterations < est.iterations
    assert top_hessian_eigenvalue(loss, params=params, tol=1e-2) == loose  # seeded
    capped = top_hessian_eigenvalue(loss, params=params, tol=1e-14, max_iters=3)
    assert not capped.converged and capped.iterations == 3


def test_hvp_is_the_matrix_product():
    A = spd([4.0, 1.0, 2.0])
    loss, params = quadratic(A)
    v = torch.tensor([1.0, -1.0, 2.0], dtype=F64)
    (hv,) = hessian_vector_product(loss, params, [v])
    torch.testing.assert_close(hv, A @ v)


def test_hutchinson_trace_is_within_its_standard_error():
    A = spd([5.0, 3.0, 2.0, 1.0, 0.5, 0.1, -0.2, 0.0], seed=1)
    loss, params = quadratic(A)
    n = 400
    est = hessian_trace(loss, params=params, samples=n, seed=0)
    assert est.samples == n
    theory = math.sqrt(2 * float((A**2).sum() - (torch.diagonal(A) ** 2).sum()) / n)
    assert 0.8 * theory < est.stderr < 1.2 * theory
    assert abs(est.mean - float(torch.trace(A))) < 4 * est.stderr
    # a diagonal Hessian is estimated exactly by Rademacher probes
    D = torch.diag(torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=F64))
    loss, params = quadratic(D)
    exact = hessian_trace(loss, params=params, samples=10)
    assert exact.mean == pytest.approx(4.5, abs=1e-12) and exact.stderr == pytest.approx(0.0, abs=1e-12)


def test_model_hessian_matches_the_full_hessian():
    torch.manual_seed(0)
    model = Classifier(nn.Identity(), ResidualStack(MLPField(2, 4, depth=1), 3), nn.Linear(2, 3)).double()
    x, y = torch.randn(32, 2, dtype=F64), torch.randint(0, 3, (32,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    H = torch.autograd.functional.hessian(loss_of, flat0)
    eig = torch.linalg.eigvalsh(H)
    dominant = float(eig[eig.abs().argmax()])
    est = top_hessian_eigenvalue(model, x, y, tol=1e-9, max_iters=1000)
    assert est.converged
    assert est.eigenvalue == pytest.approx(dominant, rel=1e-5)
    tr = hessian_trace(model, x, y, samples=300)
    assert abs(tr.mean - float(torch.trace(H))) < 4 * tr.stderr
    assert all(p.grad is None for p in model.parameters())


def test_adjoint_ode_block_is_refused_and_closures_need_params():
    model = Classifier(nn.Identity(), ODEBlock(MLPField(2, 4), adjoint=True), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="adjoint=False"):
        top_hessian_eigenvalue(model, torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="params"):
        hessian_trace(lambda: torch.zeros(()))
