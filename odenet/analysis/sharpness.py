"""Sharpness: the top Hessian eigenvalue (power iteration) and the Hessian trace (Hutchinson).

Both use Hessian-vector products by double backward, ``Hv = d/dtheta <dL/dtheta, v>``, with the
gradient graph built once; the Hessian is never formed. They take a model with a loss
(``loss_fn(model(x), y)`` over all its trainable parameters) or any closure returning a scalar
loss plus the tensors to differentiate it by. Random vectors come from a generator seeded with
``seed`` (the global RNG is not touched), so a measurement is reproducible.

Set the model's mode first (``model.eval()``: dropout would make the loss random). An
``ODEBlock`` with ``adjoint=True`` cannot be differentiated twice: measure it with
``block.with_solver(block.solver, adjoint=False)`` (same field, same tolerances).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import ODEBlock
from ._util import LossFn

__all__ = ["EigenEstimate", "TraceEstimate", "hessian_trace", "hessian_vector_product", "top_hessian_eigenvalue"]


class EigenEstimate(NamedTuple):
    eigenvalue: float
    """The Rayleigh quotient ``v^T H v`` at the last iterate: the dominant (largest-magnitude) eigenvalue."""
    iterations: int
    """Hessian-vector products used."""
    converged: bool
    """Whether the relative change fell below ``tol`` within ``max_iters``."""


class TraceEstimate(NamedTuple):
    mean: float
    """Hutchinson's estimate of ``tr(H)``: the mean of ``z^T H z`` over the probes."""
    stderr: float
    """Its standard error, ``std(z^T H z) / sqrt(samples)`` (sample std, ddof 1; 0 for one probe)."""
    samples: int


def _closure(
    model_or_loss: nn.Module | Callable[[], Tensor],
    x: Tensor | None,
    y: Tensor | None,
    loss_fn: LossFn,
    params: Sequence[Tensor] | None,
) -> tuple[Callable[[], Tensor], list[Tensor]]:
    if isinstance(model_or_loss, nn.Module):
        model = model_or_loss
        for m in model.modules():
            if isinstance(m, ODEBlock) and m.adjoint:
                raise ValueError(
                    "Hessian-vector products need double backward, which odeint_adjoint does not support: "
                    "use block.with_solver(block.solver, adjoint=False)"
                )
        if x is None:
            raise ValueError("x (the inputs) is required with a model")
        chosen = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        return (lambda: loss_fn(model(x), y)), chosen
    if not callable(model_or_loss):
        raise TypeError(f"expected an nn.Module or a loss closure, got {type(model_or_loss).__name__}")
    if params is None:
        raise ValueError("params (the tensors to differentiate by) is required with a loss closure")
    return model_or_loss, list(params)


class _HVP:
    """Hessian-vector products of one loss evaluation (its gradient graph kept)."""

    def __init__(self, loss_closure: Callable[[], Tensor], params: list[Tensor]) -> None:
        if not params:
            raise ValueError("no parameters to differentiate by (none requires grad)")
        with torch.enable_grad():
            loss = loss_closure()
            if loss.ndim != 0:
                raise ValueError(f"the loss must be a scalar, got shape {tuple(loss.shape)}")
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        self.params = params
        self.grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        self.loss = float(loss.detach())

    def __call__(self, v: list[Tensor]) -> list[Tensor]:
        dot = sum((g * vi).sum() for g, vi in zip(self.grads, v) if g.requires_grad)
        if not isinstance(dot, Tensor) or not dot.requires_grad:  # the loss is linear in every parameter
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
        return [h.detach() if h is not None else torch.zeros_like(p) for h, p in zip(hv, self.params)]


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((ai.double() * bi.double()).sum() for ai, bi in zip(a, b)))


def _randn(params: list[Tensor], g: torch.Generator) -> list[Tensor]:
    return [torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) for p in params]


def _rademacher(params: list[Tensor], g: torch.Generator) -> list[Tensor]:
    return [
        (torch.randint(0, 2, p.shape, generator=g).to(dtype=p.dtype, device=p.device) * 2 - 1) for p in params
    ]


def hessian_vector_product(
    loss_closure: Callable[[], Tensor], params: Sequence[Tensor], vector: Sequence[Tensor]
) -> list[Tensor]:
    """``H v`` for the Hessian of ``loss_closure()`` with respect to ``params`` (one tensor per parameter)."""
    return _HVP(loss_closure, list(params))([v.detach() for v in vector])


def top_hessian_eigenvalue(
    model_or_loss: nn.Module | Callable[[], Tensor],
    x: Tensor | None = None,
    y: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    params: Sequence[Tensor] | None = None,
    max_iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> EigenEstimate:
    """The dominant eigenvalue of the loss Hessian by power iteration on Hessian-vector products.

    ``model_or_loss`` is a model (loss ``loss_fn(model(x), y)``, by default over every parameter
    with ``requires_grad``) or a closure ``() -> scalar loss`` with ``params`` given. Starting
    from a Gaussian vector (seeded), iterate ``v <- Hv / ||Hv||`` with ``lambda = v^T H v`` until
    ``|lambda - lambda_prev| <= tol |lambda|``. Power iteration finds the largest-*magnitude*
    eigenvalue: near a minimum that is the top (sharpness) one; a negative value means negative
    curvature dominates.
    """
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    closure, chosen = _closure(model_or_loss, x, y, loss_fn, params)
    hvp = _HVP(closure, chosen)
    g = torch.Generator().manual_seed(seed)
    v = _randn(chosen, g)
    norm = math.sqrt(_dot(v, v))
    v = [vi / norm for vi in v]
    eigenvalue, previous = 0.0, None
    for it in range(1, max_iters + 1):
        hv = hvp(v)
        eigenvalue = _dot(v, hv)
        norm = math.sqrt(_dot(hv, hv))
        if norm == 0.0:  # v is in the null space (or H = 0): the eigenvalue of v is 0
            return EigenEstimate(0.0, it, True)
        if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            return EigenEstimate(eigenvalue, it, True)
        previous = eigenvalue
        v = [h / norm for h in hv]
    return EigenEstimate(eigenvalue, max_iters, False)


def hessian_trace(
    model_or_loss: nn.Module | Callable[[], Tensor],
    x: Tensor | None = None,
    y: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    params: Sequence[Tensor] | None = None,
    samples: int = 100,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson's estimate of ``tr(H)``: the mean of ``z^T H z`` over ``samples`` Rademacher probes ``z``.

    Unbiased, with variance ``2 sum_{i != j} H_ij^2 / samples`` (exact for a diagonal Hessian).
    Arguments as for ``top_hessian_eigenvalue``.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    closure, chosen = _closure(model_or_loss, x, y, loss_fn, params)
    hvp = _HVP(closure, chosen)
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([_dot(z, hvp(z)) for z in (_rademacher(chosen, g) for _ in range(samples))],
                          dtype=torch.float64)
    stderr = float(values.std(unbiased=True) / math.sqrt(samples)) if samples > 1 else 0.0
    return TraceEstimate(float(values.mean()), stderr, samples)
