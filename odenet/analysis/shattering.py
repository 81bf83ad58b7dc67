"""Shattered gradients (Balduzzi et al. 2017): the input gradient of a scalar output along a line in input space.

A model ``f`` (input -> logits) is read out as the scalar ``y(x) = <u, f(x)>`` with a fixed random unit vector
``u`` (a scalar output passes through as it is). On the segment ``x(s) = a + s (b - a)``, ``s`` in ``[0, 1]``
sampled at ``points`` equal steps, we take per point either the directional derivative ``dy/ds = <grad y, b - a>``
(Balduzzi et al.'s 1-D input gradient) or the full input gradient ``grad y(x(s))``. Shallow nets give a
gradient that wanders like a random walk (brown noise: power ~ f^-2, autocorrelation near 1 at short lags); a
shattered gradient is white noise (flat spectrum, autocorrelation ~0 at every lag >= 1).

The sequence statistics take ``g`` of shape ``(n,)`` or ``(n, d)`` (a vector per point):

- autocorrelation at lag k, centred (default): ``r(k) = sum_i <g_i - m, g_{i+k} - m> / sum_i ||g_i - m||^2``
  (``m`` the mean over points; the usual biased estimator, ``r(0) = 1``); uncentred: the cosine
  ``sum_i <g_i, g_{i+k}> / sqrt(sum_i ||g_i||^2 sum_i ||g_{i+k}||^2)`` over the overlapping pairs. A constant
  sequence (zero variance) has ``r(k) = 1`` at every lag by convention, it is perfectly predictable
  (constant: a relative spread ``||g - m|| / ||g||`` below 1e-6, float32 rounding); an all-zero one ``NaN``;
- power spectrum: the periodogram ``|DFT(g - m)|^2 / n`` at frequencies ``1 .. n // 2`` (cycles per line),
  summed over the ``d`` components; its spectral slope is the least-squares slope of ``log P`` against
  ``log f`` (white noise ~0, Brownian motion ~-2).

Samples must not interact in the model (eval mode, no batch statistics); parameters and ``.grad`` are untouched.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "LineGradients",
    "Shattering",
    "ShatteringSummary",
    "autocorrelation",
    "line_gradients",
    "power_spectrum",
    "readout",
    "segment_pairs",
    "line_shattering",
    "shattering_summary",
    "spectral_slope",
]

Mode = Literal["directional", "full"]


class LineGradients(NamedTuple):
    """Input gradients of a scalar output at equally spaced points of a segment."""

    s: Tensor
    """Position of each point on the segment, ``linspace(0, 1, points)`` (float64)."""
    outputs: Tensor
    """The scalar output ``y(x(s))`` at each point, shape ``(points,)``."""
    grads: Tensor
    """``dy/ds`` (shape ``(points,)``, directional) or ``grad_x y`` (shape ``(points, *input_shape)``, full)."""


class ShatteringSummary(NamedTuple):
    """A gradient sequence in four numbers."""

    lag1: float
    """Centred autocorrelation at lag 1 (~1: smooth, brown; ~0: white noise)."""
    lag1_uncentred: float
    """Uncentred autocorrelation (cosine) at lag 1."""
    slope: float
    """Log-log slope of the power spectrum (~-2: Brownian, ~0: white)."""
    rms: float
    """Root-mean-square gradient norm over the points."""


def readout(outputs: Tensor, seed: int = 0) -> Tensor:
    """The scalar ``<u, f(x)>`` per sample, ``u`` a random unit vector drawn with ``seed`` (a scalar passes)."""
    if outputs.ndim == 1:
        return outputs
    flat = outputs.reshape(outputs.shape[0], -1)
    if flat.shape[1] == 1:
        return flat[:, 0]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(flat.shape[1], generator=g, dtype=torch.float64)
    u = (u / u.norm()).to(dtype=flat.dtype, device=flat.device)
    return flat @ u


def line_gradients(
    model: nn.Module, start: Tensor, end: Tensor, *, points: int = 256, mode: Mode = "directional", seed: int = 0
) -> LineGradients:
    """Gradients of ``readout(model(x), seed)`` at ``points`` equally spaced points from ``start`` to ``end``.

    ``start`` and ``end`` are single inputs (no batch dimension); all points go through the model as one batch.
    ``mode="directional"`` gives ``dy/ds = <grad y, end - start>``; ``"full"`` the whole input gradient.
    """
    if mode not in ("directional", "full"):
        raise ValueError(f"mode must be 'directional' or 'full', got {mode!r}")
    if points < 2:
        raise ValueError(f"points must be >= 2, got {points}")
    if start.shape != end.shape:
        raise ValueError(f"start and end must have the same shape, got {tuple(start.shape)} and {tuple(end.shape)}")
    s = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    direction = (end - start).detach()
    ss = s.to(dtype=start.dtype, device=start.device).reshape(-1, *([1] * start.ndim))
    x = (start.detach() + ss * direction).requires_grad_(True)
    with torch.enable_grad():
        y = readout(model(x), seed)
        if y.shape != (points,):
            raise ValueError(f"the model must give one output row per point, got shape {tuple(y.shape)}")
        (grad,) = torch.autograd.grad(y.sum(), x)
    grad = grad.detach()
    if mode == "directional":
        grad = (grad * direction).reshape(points, -1).sum(dim=1)
    return LineGradients(s, y.detach(), grad)


def _rows(g: Tensor) -> Tensor:
    """``g`` as float64 rows ``(n, d)``."""
    if g.ndim == 0:
        raise ValueError("a gradient sequence needs at least one dimension (the points)")
    return g.detach().to(torch.float64).reshape(g.shape[0], -1).cpu()


def autocorrelation(g: Tensor, max_lag: int | None = None, *, centered: bool = True) -> Tensor:
    """Normalised autocorrelation ``r(0..max_lag)`` of a sequence ``(n,)`` or ``(n, d)`` (see the module doc).

    ``max_lag`` defaults to ``n // 2``; the result has shape ``(max_lag + 1,)`` (float64), ``r(0) = 1``.
    """
    x = _rows(g)
    n = x.shape[0]
    max_lag = n // 2 if max_lag is None else max_lag
    if not 0 <= max_lag < n:
        raise ValueError(f"max_lag must be in [0, {n - 1}] for {n} points, got {max_lag}")
    raw = x.pow(2).sum()
    if not float(raw) > 0:  # an all-zero (vanished) sequence has no correlation
        return torch.full((max_lag + 1,), math.nan, dtype=torch.float64)
    centred = x - x.mean(dim=0)
    if not float(centred.pow(2).sum()) > 1e-12 * float(raw):  # constant to float32 rounding: perfectly predictable
        return torch.ones(max_lag + 1, dtype=torch.float64)
    if centered:
        x = centred
    x = x / x.abs().max()
    out = torch.empty(max_lag + 1, dtype=torch.float64)
    total = x.pow(2).sum()
    for k in range(max_lag + 1):
        a, b = x[: n - k], x[k:]
        num = (a * b).sum()
        out[k] = num / total if centered else num / (a.pow(2).sum() * b.pow(2).sum()).sqrt().clamp_min(1e-300)
    return out


def power_spectrum(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(frequencies, power)``: the periodogram of the centred sequence at ``1 .. n // 2`` cycles per line.

    ``power[j] = sum_d |sum_i (g_i - m)_d exp(-2 pi i f_j i / n)|^2 / n``; a ``(n, d)`` sequence sums its components.
    """
    x = _rows(g)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"a power spectrum needs at least 4 points, got {n}")
    x = x - x.mean(dim=0)
    power = torch.fft.rfft(x, dim=0).abs().pow(2).sum(dim=1) / n
    f = torch.arange(power.shape[0], dtype=torch.float64)
    return f[1:], power[1:]


def spectral_slope(g: Tensor) -> float:
    """Least-squares slope of ``log power`` against ``log frequency`` (~0 white noise, ~-2 a random walk).

    Frequencies with zero power are left out; NaN when fewer than two remain (a constant or linear sequence).
    """
    f, p = power_spectrum(g)
    keep = p > p.max() * 1e-24 if float(p.max()) > 0 else torch.zeros_like(p, dtype=torch.bool)
    if int(keep.sum()) < 2:
        return math.nan
    lf, lp = f[keep].log(), p[keep].log()
    lf_c = lf - lf.mean()
    return float((lf_c * (lp - lp.mean())).sum() / lf_c.pow(2).sum())


def shattering_summary(g: Tensor) -> ShatteringSummary:
    """Lag-1 autocorrelation (centred and uncentred), spectral slope and RMS norm of a gradient sequence."""
    x = _rows(g)
    return ShatteringSummary(
        lag1=float(autocorrelation(x, 1)[1]),
        lag1_uncentred=float(autocorrelation(x, 1, centered=False)[1]),
        slope=spectral_slope(x),
        rms=float(x.pow(2).sum(dim=1).mean().sqrt()),
    )


class Shattering(NamedTuple):
    """Gradient sequences on several segments of one model, summarised and averaged over the segments."""

    pairs: list[tuple[int, int]]
    """Indices ``(i, j)`` into the inputs of each segment's ends."""
    lag1: list[float]
    """Centred lag-1 autocorrelation per segment."""
    lag1_uncentred: list[float]
    slope: list[float]
    """Spectral slope per segment."""
    rms: list[float]
    autocorrelation: Tensor
    """Centred autocorrelation at lags ``0 .. max_lag``, mean over segments (NaN segments left out)."""
    frequencies: Tensor
    power: Tensor
    """Periodogram at ``frequencies``, each segment's normalised to unit total power, then averaged."""
    example: Tensor
    """The first segment's gradient sequence ``dy/ds``."""


def segment_pairs(y: Tensor, lines: int) -> list[tuple[int, int]]:
    """Up to ``lines`` disjoint pairs ``(i, j)``, ``i < j``, of examples with different targets, in order.

    Each pair is an example and the next one after it with another label; the next pair starts after ``j``.
    """
    labels = y.detach().cpu().reshape(y.shape[0], -1).tolist()
    pairs: list[tuple[int, int]] = []
    i = 0
    while len(pairs) < lines and i < len(labels):
        j = next((k for k in range(i + 1, len(labels)) if labels[k] != labels[i]), None)
        if j is None:
            break
        pairs.append((i, j))
        i = j + 1
    return pairs


def line_shattering(
    model: nn.Module, x: Tensor, y: Tensor, *, lines: int = 8, points: int = 256, max_lag: int = 32, seed: int = 0
) -> Shattering:
    """Directional gradients of ``readout(model(.), seed)`` along segments between examples of ``x`` with different
    targets ``y`` (:func:`segment_pairs`), with their summaries, mean autocorrelation and mean spectrum."""
    pairs = segment_pairs(y, lines)
    if not pairs:
        raise ValueError("no two examples with different targets to draw a segment between")
    seqs = [line_gradients(model, x[i], x[j], points=points, seed=seed).grads for i, j in pairs]
    sums = [shattering_summary(g) for g in seqs]
    acs = torch.stack([autocorrelation(g, min(max_lag, points - 1)) for g in seqs])
    acs = acs[~acs.isnan().any(dim=1)]
    spectra = []
    for g in seqs:
        f, p = power_spectrum(g)
        if float(p.sum()) > 0:
            spectra.append(p / p.sum())
    nan = torch.full((min(max_lag, points - 1) + 1,), math.nan, dtype=torch.float64)
    return Shattering(
        pairs=pairs,
        lag1=[s.lag1 for s in sums],
        lag1_uncentred=[s.lag1_uncentred for s in sums],
        slope=[s.slope for s in sums],
        rms=[s.rms for s in sums],
        autocorrelation=acs.mean(dim=0) if len(acs) else nan,
        frequencies=f,
        power=torch.stack(spectra).mean(dim=0) if spectra else torch.full_like(f, math.nan),
        example=seqs[0].to(torch.float64).cpu(),
    )
