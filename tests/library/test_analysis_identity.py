"""Known answers for odenet.analysis.identity: Jacobian ranks of maps whose rank is computed by hand, and the
recoverability (R²) of an input from an invertible map, a projection and a ReLU layer."""

from __future__ import annotations

import math

import pytest
import torch

from odenet.analysis import (
    held_out_recoverability,
    jacobian_ranks,
    jacobians,
    low_rank_error,
    numerical_ranks,
    random_layer_info,
    recoverability,
)


def orthogonal_columns(n: int, d: int, scales: list[float]) -> torch.Tensor:
    """``n`` points whose ``d`` centred columns are orthogonal with sums of squares ``n * scales[j]**2``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d + 1, generator=g, dtype=torch.float64)
    a[:, 0] = 1.0
    q, _ = torch.linalg.qr(a)  # q[:, 1:] is orthogonal to the constant column: centred
    return q[:, 1:] * math.sqrt(n) * torch.tensor(scales, dtype=torch.float64)


def test_relu_layer_rank_counts_the_active_rows():
    # W has rows e1, e2, e1 + e2, -e1 (d = 2, width 4). At x = (1, -1): W x = (1, -1, 0, -1): only row e1 is
    # active (0 counts as dead), rank 1. At x = (1, 2): (1, 2, 3, -1): rows e1, e2, e1 + e2, rank 2. At
    # x = (-1, -1): only -e1 is active, rank 1. At x = (-1, 1): rows e2 and -e1, rank 2.
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    x = torch.tensor([[1.0, -1.0], [1.0, 2.0], [-1.0, -1.0], [-1.0, 1.0]])
    J = jacobians(lambda v: torch.relu(v @ W.T), x)
    assert J.shape == (4, 4, 2)
    active = (x @ W.T > 0).float()
    torch.testing.assert_close(J, active.unsqueeze(-1) * W)
    assert jacobian_ranks(lambda v: torch.relu(v @ W.T), x).tolist() == [1, 2, 1, 2]


def test_rank_of_a_layer_narrower_than_its_input():
    # A linear map R^5 -> R^3 has rank 3 everywhere; its composition back up to R^5 still rank 3.
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(3, 5, generator=g), torch.randn(5, 3, generator=g)
    x = torch.randn(7, 5, generator=g)
    assert jacobian_ranks(lambda v: v @ A.T @ B.T, x).tolist() == [3] * 7
    assert jacobian_ranks(lambda v: v, x).tolist() == [5] * 7


def test_numerical_rank_threshold_is_shared_by_the_batch():
    mats = torch.stack([torch.diag(torch.tensor([1.0, 1e-3])), torch.diag(torch.tensor([1e-7, 0.0]))])
    assert numerical_ranks(mats, rtol=1e-5).tolist() == [2, 0]  # 1e-7 is below 1e-5 of the batch's largest
    assert numerical_ranks(mats, rtol=1e-2).tolist() == [1, 0]
    assert numerical_ranks(torch.zeros(2, 3, 3)).tolist() == [0, 0]


def test_invertible_linear_map_recovers_the_input_exactly():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64) + 3 * torch.eye(4, dtype=torch.float64)
    assert recoverability(x, x @ A.T + 5.0) == pytest.approx(1.0, abs=1e-12)
    assert held_out_recoverability(x, x @ A.T - 1.0) == pytest.approx(1.0, abs=1e-12)


def test_projection_loses_exactly_the_dropped_dimensions():
    # Orthogonal centred columns with variances 4, 1, 9, 2: keeping columns 0 and 2 recovers (4 + 9) / 16.
    x = orthogonal_columns(100, 4, [2.0, 1.0, 3.0, math.sqrt(2.0)])
    assert recoverability(x, x[:, [0, 2]]) == pytest.approx(13 / 16, abs=1e-12)
    assert recoverability(x, x[:, [1]]) == pytest.approx(1 / 16, abs=1e-12)
    assert recoverability(x, torch.zeros(100, 2, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)


def test_low_rank_error_drops_the_smallest_variances():
    # Orthogonal centred columns with variances 4, 1, 9, 2 (d = 4): the best rank-2 affine map keeps 9 and 4 and
    # leaves (1 + 2) / 4 per feature; rank 0 leaves the mean variance 16 / 4; rank 4 nothing.
    x = orthogonal_columns(100, 4, [2.0, 1.0, 3.0, math.sqrt(2.0)]) + 7.0
    assert low_rank_error(x, 2) == pytest.approx(3 / 4, abs=1e-12)
    assert low_rank_error(x, 0) == pytest.approx(4.0, abs=1e-12)
    assert low_rank_error(x, 4) == pytest.approx(0.0, abs=1e-12)
    # ... and the least-squares reconstruction from the top two coordinates attains it
    resid = 1 - recoverability(x, x[:, [0, 2]])
    assert resid * 16 / 4 == pytest.approx(low_rank_error(x, 2), abs=1e-12)


def test_held_out_score_uses_the_fitted_map():
    # Fit on x -> z = x (perfect), score on a test set whose z is 0: residual = ||x_test - mean||^2, R² = 0 when
    # the fitted mean is the test mean.
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    xt = torch.tensor([[2.0], [-2.0]], dtype=torch.float64)
    assert recoverability(x, x, xt, xt) == pytest.approx(1.0)
    assert recoverability(x, x, xt, torch.zeros_like(xt)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both"):
        recoverability(x, x, xt)
    with pytest.raises(ValueError, match="do not vary"):
        recoverability(torch.ones(3, 2), torch.randn(3, 2))


def test_relu_of_a_one_dimensional_input_keeps_only_its_positive_part():
    x = torch.linspace(-1, 1, 2001, dtype=torch.float64).unsqueeze(1)
    # x ~ U(-1, 1) (a fine grid), z = relu(x). Var x = 1/3, Cov(x, z) = E[x² 1{x > 0}] = 1/6,
    # Var z = E[z²] - E[z]² = 1/6 - 1/16 = 5/48: the best affine fit explains Cov² / (Var x Var z) = 4/5 of Var x.
    # The pair (relu(x), relu(-x)) recovers x exactly (x = relu(x) - relu(-x)).
    one = recoverability(x, torch.relu(x))
    assert one == pytest.approx(0.8, abs=2e-3)
    assert recoverability(x, torch.cat([torch.relu(x), torch.relu(-x)], 1)) == pytest.approx(1.0, abs=1e-12)


def test_random_layer_info_below_and_above_the_input_dimension():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 8, generator=g)
    info = random_layer_info(x, [2, 8, 64], seed=0)
    assert info.dim == 8 and info.widths == [2, 8, 64]
    lin, relu = info.r2["linear"], info.r2["relu"]
    # a linear layer of width w < d keeps at most w of d isotropic dimensions; at w >= d it is invertible
    assert lin[0] < 2 / 8 + 0.1 and lin[1] == pytest.approx(1.0, abs=1e-9) and lin[2] == pytest.approx(1.0, abs=1e-9)
    assert info.rank["linear"] == [2.0, 8.0, 8.0]
    # ReLU at width d keeps half the rows active on average (rank ~ d / 2) and loses part of x; at 8 d it keeps
    # nearly all of it (every direction active for some unit)
    assert info.rank["relu"][1] == pytest.approx(4.0, abs=0.5) and info.rank["relu"][2] == 8.0
    assert relu[1] < lin[1] - 0.05 and relu[2] > 0.95 and relu[0] < relu[1] < relu[2]
    assert info.rank["tanh"] == [2.0, 8.0, 8.0]
    with pytest.raises(ValueError, match="unknown activation"):
        random_layer_info(x, [2], activations=("gelu",))
