"""Loss landscape: filter-normalised random slices and linear interpolation (Li et al. 2018).

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018):
a random Gaussian direction ``d`` in parameter space, each *filter* of it (an output row of a
linear weight, an output channel of a conv kernel: index 0 of every weight of dim >= 2) rescaled
to the norm of the same filter of the weights, ``d_i <- d_i ||theta_i|| / ||d_i||``; biases and
normalisation parameters (dim <= 1) are zero in the direction (the paper's recommended setting).
A 1D slice is ``L(theta + a d)``, a 2D slice ``L(theta + a d1 + b d2)`` on a grid; the linear
interpolation between two solutions is ``L((1 - a) theta_A + a theta_B)`` (Goodfellow et al. 2015).

Every evaluation is functional (``torch.func.functional_call``): the model's parameters are never
modified. Points of a slice are evaluated in batches with ``torch.func.vmap`` (``chunk_size``
at a time) when the model allows it (a ``ResidualStack`` does; an adaptive ``ODEBlock`` does not,
its step-size control is data dependent) and one by one otherwise. A 21 x 21 slice of a
``MLPField(2, 32)`` 8-step Euler classifier on 1,000 points takes about 1.5 s on one CPU thread.
Set the model's mode first (``model.eval()``): dropout or batch statistics make a slice random
and cannot be vmapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ._util import LossFn

__all__ = [
    "Direction",
    "Slice1D",
    "Slice2D",
    "interpolate",
    "loss_at",
    "normalize_direction",
    "random_direction",
    "slice_1d",
    "slice_2d",
]

Direction = dict[str, Tensor]
"""A direction in parameter space: parameter name -> tensor of that parameter's shape."""
Norm = Literal["filter", "layer", "none"]


class Slice1D(NamedTuple):
    alphas: Tensor
    """Coordinates along the direction, shape ``(steps,)``."""
    losses: Tensor
    """Loss at each coordinate, shape ``(steps,)``."""


class Slice2D(NamedTuple):
    alphas: Tensor
    """Coordinates along the first direction, shape ``(steps,)`` (rows of ``losses``)."""
    betas: Tensor
    """Coordinates along the second direction, shape ``(steps,)`` (columns of ``losses``)."""
    losses: Tensor
    """``losses[i, j] = L(theta + alphas[i] d1 + betas[j] d2)``, shape ``(steps, steps)``."""


def _parameters(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters by name (each shared tensor once), detached."""
    return {name: p.detach() for name, p in model.named_parameters()}


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    norm: Norm = "filter",
    ignore_1d: bool = True,
    eps: float = 1e-10,
) -> Direction:
    """``direction`` rescaled to the scale of ``weights`` (a new dict; the inputs are not modified).

    ``norm="filter"``: each filter ``d[i]`` (index 0 of a weight of dim >= 2) gets the norm of
    ``weights[name][i]``; ``"layer"``: each tensor gets its weight's norm; ``"none"``: unchanged.
    With ``ignore_1d`` (Li et al.'s ``biasbn``) tensors of dim <= 1 (biases, norm scales, learned
    step logits) are zeroed; otherwise each is rescaled as one filter.
    """
    if norm not in ("filter", "layer", "none"):
        raise ValueError(f"norm must be 'filter', 'layer' or 'none', got {norm!r}")
    out: Direction = {}
    for name, d in direction.items():
        w = weights[name].detach()
        if d.shape != w.shape:
            raise ValueError(f"direction {name!r} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}")
        d = d.detach()
        if w.dim() <= 1:
            if ignore_1d:
                out[name] = torch.zeros_like(d)
                continue
            d_rows, w_rows = d.reshape(1, -1), w.reshape(1, -1)
        elif norm == "filter":
            d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
        else:
            d_rows, w_rows = d.reshape(1, -1), w.reshape(1, -1)
        if norm == "none":
            out[name] = d.clone()
            continue
        scale = w_rows.norm(dim=1, keepdim=True) / (d_rows.norm(dim=1, keepdim=True) + eps)
        out[name] = (d_rows * scale).reshape(d.shape)
    return out


def random_direction(
    model: nn.Module,
    seed: int | None = 0,
    norm: Norm = "filter",
    ignore_1d: bool = True,
    generator: torch.Generator | None = None,
) -> Direction:
    """A Gaussian direction over all of ``model``'s parameters, normalised by ``normalize_direction``.

    Drawn from ``generator`` if given, else from a CPU generator seeded with ``seed`` (the global
    RNG is not touched); draws follow ``model.named_parameters()`` order.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    weights = _parameters(model)
    raw = {
        name: torch.randn(w.shape, generator=generator, dtype=w.dtype, device="cpu").to(w.device)
        for name, w in weights.items()
    }
    return normalize_direction(raw, weights, norm=norm, ignore_1d=ignore_1d)


def loss_at(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    directions: Sequence[Mapping[str, Tensor]],
    coefficients: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    *,
    base: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = 16,
    vectorize: bool | None = None,
) -> Tensor:
    """``loss_fn(model_theta(x), y)`` at ``theta = base + sum_i c[p, i] directions[i]`` for each row ``p``.

    ``coefficients`` has shape ``(P, len(directions))``; returns shape ``(P,)``. ``base`` maps
    names of parameters (and, optionally, buffers) to values; it defaults to the model's current
    parameters, and the model's own values fill what it leaves out. ``vectorize``: ``True`` vmaps
    over the points (``chunk_size`` at a time; ``None`` = all at once), ``False`` loops, ``None``
    tries vmap and falls back to the loop if the model cannot be vmapped. The model is never
    modified.
    """
    coefficients = torch.as_tensor(coefficients)
    if coefficients.ndim != 2 or coefficients.shape[1] != len(directions):
        raise ValueError(
            f"coefficients must have shape (points, {len(directions)}), got {tuple(coefficients.shape)}"
        )
    current = _parameters(model)
    names = set(current) | {n for n, _ in model.named_buffers()}
    theta0 = dict(current) if base is None else {n: v.detach() for n, v in base.items()}
    unknown = set(theta0).union(*(d.keys() for d in directions)) - names
    if unknown:
        raise ValueError(f"names not among the model's parameters or buffers: {sorted(unknown)}")
    for d in directions:
        for name in d:
            if name not in theta0:
                theta0[name] = current[name]
    moved = [n for n in theta0 if theta0[n].is_floating_point() and any(n in d for d in directions)]
    floating = [v for v in theta0.values() if v.is_floating_point()]
    dtype = floating[0].dtype if floating else torch.get_default_dtype()
    coefficients = coefficients.to(dtype=dtype, device=floating[0].device if floating else x.device)

    def point(c: Tensor) -> Tensor:
        theta = dict(theta0)
        for name in moved:
            value = theta0[name]
            for i, d in enumerate(directions):
                if name in d:
                    value = value + c[i] * d[name]
            theta[name] = value
        return loss_fn(functional_call(model, theta, (x,)), y)

    def loop() -> Tensor:
        return torch.stack([point(c) for c in coefficients])

    with torch.no_grad():
        if vectorize is False:
            return loop()
        try:
            return vmap(point, chunk_size=chunk_size)(coefficients)
        except Exception:
            if vectorize:
                raise
            return loop()


def _grid(steps: int, span: tuple[float, float]) -> Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    lo, hi = span
    if not lo < hi:
        raise ValueError(f"span must be (low, high) with low < high, got {span!r}")
    return torch.linspace(float(lo), float(hi), steps, dtype=torch.float64)


def slice_1d(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    direction: Mapping[str, Tensor] | None = None,
    steps: int = 21,
    span: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    chunk_size: int | None = 16,
    vectorize: bool | None = None,
) -> Slice1D:
    """``L(theta + a d)`` for ``steps`` values of ``a`` evenly spaced over ``span``.

    ``d`` defaults to ``random_direction(model, seed)`` (filter-normalised, biases zeroed).
    """
    if direction is None:
        direction = random_direction(model, seed=seed)
    alphas = _grid(steps, span)
    losses = loss_at(
        model, x, y, [direction], alphas[:, None], loss_fn, chunk_size=chunk_size, vectorize=vectorize
    )
    return Slice1D(alphas, losses)


def slice_2d(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    directions: tuple[Mapping[str, Tensor], Mapping[str, Tensor]] | None = None,
    steps: int = 21,
    span: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    chunk_size: int | None = 16,
    vectorize: bool | None = None,
) -> Slice2D:
    """``L(theta + a d1 + b d2)`` on a ``steps x steps`` grid over ``span x span``.

    ``(d1, d2)`` default to two filter-normalised random directions drawn one after the other from
    one generator seeded with ``seed``.
    """
    if directions is None:
        g = torch.Generator().manual_seed(seed)
        directions = (random_direction(model, generator=g), random_direction(model, generator=g))
    axis = _grid(steps, span)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    coefficients = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    losses = loss_at(
        model, x, y, list(directions), coefficients, loss_fn, chunk_size=chunk_size, vectorize=vectorize
    )
    return Slice2D(axis, axis.clone(), losses.reshape(steps, steps))


def _state(source: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


def interpolate(
    model: nn.Module,
    start: nn.Module | Mapping[str, Tensor],
    end: nn.Module | Mapping[str, Tensor],
    x: Tensor,
    y: Tensor | None,
    loss_fn: LossFn = F.cross_entropy,
    *,
    steps: int = 21,
    span: tuple[float, float] = (0.0, 1.0),
    chunk_size: int | None = 16,
    vectorize: bool | None = None,
) -> Slice1D:
    """``L((1 - a) theta_A + a theta_B)`` for ``a`` over ``span`` (``a = 0``: ``start``, ``a = 1``: ``end``).

    ``start`` and ``end`` are models of ``model``'s architecture or their ``state_dict``s; every
    floating parameter and buffer is interpolated (others are taken from ``start``). ``model``
    only supplies the architecture (its own values are not used, nor modified). A ``span`` wider
    than ``(0, 1)`` extrapolates.
    """
    a_state, b_state = _state(start), _state(end)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    missing = [n for n in names if n not in a_state or n not in b_state]
    if missing:
        raise ValueError(f"start and end must hold every parameter and buffer of the model; missing {missing}")
    base = {n: a_state[n].detach() for n in names}
    direction = {
        n: b_state[n].detach() - base[n] for n in names if base[n].is_floating_point()
    }
    alphas = _grid(steps, span)
    losses = loss_at(
        model, x, y, [direction], alphas[:, None], loss_fn, base=base, chunk_size=chunk_size, vectorize=vectorize
    )
    return Slice1D(alphas, losses)
