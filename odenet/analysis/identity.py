"""How much of its input a map keeps: the numerical rank of its Jacobian at a batch of points, and how well the
input can be recovered from the output by the best affine (least-squares) reconstruction.

Sandler et al. (2018, MobileNetV2, "information loss in ReLU at low dimension") embed data into ``n`` dimensions
with a random matrix, apply ReLU and map back: at low ``n`` the input is lost, at high ``n`` it survives.
:func:`random_layer_info` measures the same on any batch of inputs, over widths below and above the input dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jacrev, vmap

#: the activations :func:`random_layer_info` applies and their derivatives ("linear" is the control: no
#: non-linearity); ReLU's derivative at 0 is 0, as autograd's
LAYER_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "relu": (torch.relu, lambda u: (u > 0).to(u.dtype)),
    "tanh": (torch.tanh, lambda u: 1 - torch.tanh(u) ** 2),
    "linear": (lambda u: u, torch.ones_like),
}


def jacobians(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The Jacobian of a batched map ``fn: (B, d) -> (B, m)`` at each row of ``x``: shape ``(B, m, d)``.

    ``fn`` must act on each row independently (no batch norm in training mode).
    """
    if x.ndim != 2:
        raise ValueError(f"x must be a batch of vectors (B, d), got shape {tuple(x.shape)}")

    def one(v: Tensor) -> Tensor:
        return fn(v.unsqueeze(0)).squeeze(0)

    return vmap(jacrev(one))(x.detach())


def numerical_ranks(mats: Tensor, rtol: float = 1e-5) -> Tensor:
    """The rank of each matrix of ``mats`` ``(B, m, d)``: singular values above ``rtol`` times the largest of the
    *batch* (an absolute threshold shared by all points, so a unit that is nearly dead everywhere counts as lost);
    int64 ``(B,)``."""
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    s = torch.linalg.svdvals(mats.detach().to(torch.float64))
    top = float(s.max()) if s.numel() else 0.0
    if top == 0.0:
        return torch.zeros(mats.shape[0], dtype=torch.int64)
    return (s > rtol * top).sum(dim=-1)


def jacobian_ranks(fn: Callable[[Tensor], Tensor], x: Tensor, rtol: float = 1e-5) -> Tensor:
    """:func:`numerical_ranks` of ``fn``'s Jacobian at each row of ``x``: how many input directions survive there."""
    return numerical_ranks(jacobians(fn, x), rtol)


def recoverability(x: Tensor, z: Tensor, x_test: Tensor | None = None, z_test: Tensor | None = None) -> float:
    """R² of the best affine reconstruction of ``x (n, d)`` from ``z (n, m)``: fit ``x ≈ z B + c`` by least
    squares (float64), then ``1 - Σ||x - x̂||² / Σ||x - x̄||²`` over all features together (the fraction of the
    input's total variance recovered). Given ``x_test, z_test`` the fit is scored on them (held out), the mean
    ``x̄`` still that of the fitted rows; the held-out score may be negative.
    """
    if x.ndim != 2 or z.ndim != 2 or len(x) != len(z):
        raise ValueError(f"x and z must be (n, d) and (n, m) with the same n, got {tuple(x.shape)}, {tuple(z.shape)}")
    if (x_test is None) != (z_test is None):
        raise ValueError("give both x_test and z_test, or neither")
    xd, zd = x.detach().to(torch.float64), z.detach().to(torch.float64)
    mean_x, mean_z = xd.mean(0), zd.mean(0)
    coef = torch.linalg.lstsq(zd - mean_z, xd - mean_x, driver="gelsd").solution  # minimum-norm on rank deficiency
    if x_test is None:
        xt, zt = xd, zd
    else:
        xt, zt = x_test.detach().to(torch.float64), z_test.detach().to(torch.float64)  # type: ignore[union-attr]
    total = float(((xt - mean_x) ** 2).sum())
    if total == 0.0:
        raise ValueError("the inputs to recover do not vary: R² is undefined")
    resid = float(((xt - mean_x - (zt - mean_z) @ coef) ** 2).sum())
    return 1.0 - resid / total


def held_out_recoverability(x: Tensor, z: Tensor) -> float:
    """:func:`recoverability` fitted on the even rows and scored on the odd ones (so a wide ``z`` cannot just
    memorise the points)."""
    if len(x) < 4:
        raise ValueError(f"need at least 4 points to hold half out, got {len(x)}")
    return recoverability(x[0::2], z[0::2], x[1::2], z[1::2])


def low_rank_error(x: Tensor, rank: int) -> float:
    """The least mean squared error (per point and feature) of any map whose outputs lie in an affine subspace of
    dimension ``rank``, reproducing ``x (n, d)``: the eigenvalues of ``x``'s covariance (``1/n``) beyond the top
    ``rank``, summed, over ``d`` (Eckart–Young). A plain stack whose layers end in ``Linear(w, d)`` cannot beat it
    with ``rank = w``, at any depth."""
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    if int(rank) < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    xd = x.detach().to(torch.float64)
    xc = xd - xd.mean(0)
    eig = torch.linalg.eigvalsh(xc.T @ xc / len(xd)).flip(0).clamp(min=0.0)  # descending
    return float(eig[int(rank):].sum()) / xd.shape[1]


@dataclass(frozen=True)
class LayerInfo:
    """:func:`random_layer_info`'s result, one entry per width, per activation."""

    dim: int  # input dimension d
    widths: list[int]
    r2: dict[str, list[float]]  # activation -> held-out R² of recovering x from sigma(W x), per width
    rank: dict[str, list[float]]  # activation -> mean Jacobian rank of x -> sigma(W x) over the points, per width


def standardize(x: Tensor) -> Tensor:
    """``x`` centred, scaled to unit mean variance per feature (``mean ||x - x̄||² = d``), float64."""
    xd = x.detach().to(torch.float64)
    xc = xd - xd.mean(0)
    scale = math.sqrt(float((xc**2).sum(1).mean()) / xd.shape[1])
    if scale == 0.0:
        raise ValueError("the inputs do not vary")
    return xc / scale


def random_layer_info(
    x: Tensor,
    widths: Sequence[int],
    activations: Sequence[str] = ("relu", "tanh", "linear"),
    seed: int = 0,
    rtol: float = 1e-5,
    rank_points: int = 256,
) -> LayerInfo:
    """Sandler et al.'s information-loss measurement on the inputs ``x (n, d)``: for each width ``w``, one random
    layer ``z = sigma(W x)`` (``x`` standardised, ``W`` ``w x d`` with i.i.d. ``N(0, 1/d)`` entries drawn from
    ``seed``, shared by the activations, no bias), the held-out R² of the best affine reconstruction of ``x``
    from ``z`` (all points) and the mean Jacobian rank ``rank(diag(sigma'(W x)) W)`` (the first ``rank_points``).
    """
    if x.ndim != 2:
        raise ValueError(f"x must be (n, d), got shape {tuple(x.shape)}")
    for a in activations:
        if a not in LAYER_ACTIVATIONS:
            raise ValueError(f"unknown activation {a!r}; must be one of {sorted(LAYER_ACTIVATIONS)}")
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must be positive integers, got {list(widths)}")
    xs = standardize(x)
    d = xs.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    r2: dict[str, list[float]] = {a: [] for a in activations}
    rank: dict[str, list[float]] = {a: [] for a in activations}
    for w in widths:
        W = torch.randn(int(w), d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        u = xs @ W.T
        for a in activations:
            act, slope = LAYER_ACTIVATIONS[a]
            r2[a].append(held_out_recoverability(xs, act(u)))
            jac = slope(u[:rank_points]).unsqueeze(-1) * W  # d sigma(W x) / dx = diag(sigma'(W x)) W
            rank[a].append(float(numerical_ranks(jac, rtol).double().mean()))
    return LayerInfo(d, [int(w) for w in widths], r2, rank)
