"""Synthetic data generated from ``seed``: spirals, sphere2, concentric spheres, and class-patterned images.

Train and test come from separate seeded streams, so the test set does not depend on ``n_train``;
``n_train`` / ``n_test`` are numbers of points. :func:`synthetic_images` stands in for MNIST / CIFAR-10
(``data.synthetic=true``) in tests and smoke runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._common import _is_int, _noise, _rngs, _size, _split_counts
from .registry import DataOptions, Dataset, register_dataset

log = logging.getLogger(__name__)


def _shuffled(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    perm = rng.permutation(len(y))
    return torch.from_numpy(x[perm].astype(np.float32)), torch.from_numpy(y[perm].astype(np.int64))


def _uniform_radius(rng: np.random.Generator, n: int, r0: float, r1: float, dim: int) -> np.ndarray:
    """Radii with density ``∝ r^(dim-1)`` on ``[r0, r1]``: uniform in volume over the shell."""
    return rng.uniform(r0**dim, r1**dim, size=n) ** (1.0 / dim)


def _directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` unit vectors uniform on the sphere in ``dim`` dimensions."""
    if dim == 1:
        return rng.choice([-1.0, 1.0], size=(n, 1))
    v = rng.standard_normal((n, dim))
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    while np.any(norm == 0):  # measure zero, but keep the division safe
        bad = norm[:, 0] == 0
        v[bad] = rng.standard_normal((int(bad.sum()), dim))
        norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / norm


# --------------------------------------------------------------------------- point clouds


def _spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    counts = _split_counts(n, 2)
    xs, ys = [], []
    for label, count in enumerate(counts):
        t = rng.uniform(0.0, 1.0, size=count)
        theta = 3.0 * math.pi * t + math.pi * label  # 1.5 turns; the second arm is the first rotated by pi
        r = 0.05 + 0.95 * t
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        xs.append(pts + noise * rng.standard_normal(pts.shape))
        ys.append(np.full(count, label))
    return _shuffled(np.concatenate(xs), np.concatenate(ys), rng)


@register_dataset("spirals")
def load_spirals(o: DataOptions) -> Dataset:
    """Two interleaved spiral arms in 2D (classes 0 and 1, half the points each), radius up to ~1.

    Arm ``k`` is ``r(t) (cos θ, sin θ)`` with ``t ~ U(0, 1)``, ``r = 0.05 + 0.95 t``,
    ``θ = 3π t + kπ`` (1.5 turns), plus Gaussian noise of std ``noise`` (default 0.05).
    Default 1000 train / 500 test points. Uses ``n_train, n_test, seed, noise``.
    """
    sigma = _noise(o.noise, 0.05)
    n_tr, n_te = _size("n_train", o.n_train, 1000), _size("n_test", o.n_test, 500)
    rng_tr, rng_te = _rngs(o.seed)
    x_tr, y_tr = _spirals(n_tr, sigma, rng_tr)
    x_te, y_te = _spirals(n_te, sigma, rng_te)
    return Dataset("spirals", x_tr, y_tr, x_te, y_te, num_classes=2)


SPHERE2_ANNULI: tuple[tuple[float, float, int], ...] = ((0.1, 0.15, 0), (0.25, 0.3, 1), (0.4, 0.45, 0))
"""``(inner radius, outer radius, label)`` of the three ``sphere2`` annuli."""


def _radial(
    regions: Sequence[tuple[float, float, int]], n: int, dim: int, noise: float, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` points split equally over the shells ``r0 < |x| < r1`` (uniform in volume), labelled per shell."""
    xs, ys = [], []
    for (r0, r1, label), count in zip(regions, _split_counts(n, len(regions))):
        pts = _uniform_radius(rng, count, r0, r1, dim)[:, None] * _directions(rng, count, dim)
        if noise > 0:
            pts = pts + noise * rng.standard_normal(pts.shape)
        xs.append(pts)
        ys.append(np.full(count, label))
    return _shuffled(np.concatenate(xs), np.concatenate(ys), rng)


@register_dataset("sphere2")
def load_sphere2(o: DataOptions) -> Dataset:
    """Ott et al. (ICLR 2021)'s sphere2: 2D points in three annuli labelled 0 / 1 / 0.

    Radii ``[0.1, 0.15]``, ``[0.25, 0.3]``, ``[0.4, 0.45]`` (``SPHERE2_ANNULI``). Each annulus
    gets an equal share of the points (not proportional to its area), so class 0 holds about
    two thirds; within an annulus points are uniform over the area
    (``r = sqrt(U(r0², r1²))``). ``noise`` (default 0) adds Gaussian jitter of that std, which
    lets points leave the annuli. Default 2000 train / 1000 test. Uses ``n_train, n_test, seed, noise``.
    """
    sigma = _noise(o.noise, 0.0)
    n_tr, n_te = _size("n_train", o.n_train, 2000), _size("n_test", o.n_test, 1000)
    rng_tr, rng_te = _rngs(o.seed)
    x_tr, y_tr = _radial(SPHERE2_ANNULI, n_tr, 2, sigma, rng_tr)
    x_te, y_te = _radial(SPHERE2_ANNULI, n_te, 2, sigma, rng_te)
    return Dataset("sphere2", x_tr, y_tr, x_te, y_te, num_classes=2)


SPHERE2_OTT_SHARES: tuple[int, ...] = (1, 2, 1)
"""Quarters of the points per ``sphere2`` annulus in Ott et al.'s generator (``generate_dataset``: N/4, N/2, N/4)."""


def _sphere2_ott(n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``n // 4``, ``n // 2``, ``n // 4`` points in the three annuli; radius ``r0 + (r1 - r0) U^(1/2)`` (their
    ``random_point_in_sphere``: not uniform over the area), direction a normalised Gaussian."""
    xs, ys = [], []
    for (r0, r1, label), share in zip(SPHERE2_ANNULI, SPHERE2_OTT_SHARES):
        count = n * share // 4
        radius = r0 + (r1 - r0) * rng.uniform(0.0, 1.0, size=count) ** 0.5
        xs.append(radius[:, None] * _directions(rng, count, 2))
        ys.append(np.full(count, label))
    return _shuffled(np.concatenate(xs), np.concatenate(ys), rng)


@register_dataset("sphere2_ott")
def load_sphere2_ott(o: DataOptions) -> Dataset:
    """Sphere2 as Ott et al.'s code generates it (``data/sphere_dataset_generation``): the annuli of ``sphere2``
    holding a quarter, a half and a quarter of the points (balanced classes), radius ``r0 + (r1 - r0) sqrt(U)``.

    ``n_train`` / ``n_test`` must be multiples of 4 (default 2000 / 1000, theirs). Uses ``n_train, n_test, seed``.
    """
    n_tr, n_te = _size("n_train", o.n_train, 2000), _size("n_test", o.n_test, 1000)
    for name, n in (("n_train", n_tr), ("n_test", n_te)):
        if n % 4:
            raise ValueError(f"data.{name} must be a multiple of 4 for sphere2_ott (N/4, N/2, N/4 per ring), got {n}")
    rng_tr, rng_te = _rngs(o.seed)
    x_tr, y_tr = _sphere2_ott(n_tr, rng_tr)
    x_te, y_te = _sphere2_ott(n_te, rng_te)
    return Dataset("sphere2_ott", x_tr, y_tr, x_te, y_te, num_classes=2)


CONCENTRIC_REGIONS: tuple[tuple[float, float, int], ...] = ((0.0, 0.5, 0), (1.0, 1.5, 1))
"""``(inner radius, outer radius, label)``: the inner ball (g = -1) and the outer shell (g = +1)."""


@register_dataset("concentric_spheres")
def load_concentric_spheres(o: DataOptions) -> Dataset:
    """Dupont et al. (2019, ANODE)'s concentric spheres in ``dim`` dimensions.

    Class 0 (g(x) = -1): the ball ``|x| < 0.5``; class 1 (g(x) = +1): the shell
    ``1 < |x| < 1.5``. Half of the points in each region, uniform in volume within it.
    ``noise`` (default 0) adds Gaussian jitter. Default 1000 train / 500 test.
    Uses ``n_train, n_test, seed, dim, noise``.
    """
    if not _is_int(o.dim) or o.dim < 1:
        raise ValueError(f"data.dim must be a positive integer, got {o.dim!r}")
    sigma = _noise(o.noise, 0.0)
    n_tr, n_te = _size("n_train", o.n_train, 1000), _size("n_test", o.n_test, 500)
    rng_tr, rng_te = _rngs(o.seed)
    x_tr, y_tr = _radial(CONCENTRIC_REGIONS, n_tr, int(o.dim), sigma, rng_tr)
    x_te, y_te = _radial(CONCENTRIC_REGIONS, n_te, int(o.dim), sigma, rng_te)
    return Dataset("concentric_spheres", x_tr, y_tr, x_te, y_te, num_classes=2)


# --------------------------------------------------------------------------- synthetic stand-ins for image sets

SYNTHETIC_SIZES = (1000, 500)  # default train / test images of synthetic_images


def synthetic_images(name: str, shape: tuple[int, int, int], o: DataOptions, num_classes: int = 10) -> Dataset:
    """Images of ``shape`` in ``[0, 1]`` whose class is a texture, generated from ``o.seed`` (no files read).

    Class ``c`` is a sinusoidal grating: orientation ``(c mod 5) x 36`` degrees, ``3`` or ``6`` periods across
    the image (``c < 5`` or not), and per channel a class colour (random from ``seed``). An image is its
    class's grating at a random phase (so crops and shifts keep the class) and contrast (0.5-1.0), plus
    Gaussian noise (std ``o.noise``, default 0.2), clipped to ``[0, 1]``; labels are balanced
    (``i mod num_classes``, shuffled). A stand-in for MNIST / CIFAR-10 in tests and smoke runs, learnable by
    a conv net with pooling: same shapes and classes, not the data. Train and test come from separate
    streams; ``n_train`` / ``n_test`` default to :data:`SYNTHETIC_SIZES`.
    """
    n_train = _size("n_train", o.n_train, SYNTHETIC_SIZES[0])
    n_test = _size("n_test", o.n_test, SYNTHETIC_SIZES[1])
    noise = _noise(o.noise, 0.2)
    c, h, w = shape
    rng_train, rng_test = _rngs(o.seed)
    classes = np.arange(num_classes)
    angle = np.pi * (classes % 5) / 5
    periods = np.where(classes < 5, 3.0, 6.0)
    wave = 2 * np.pi * periods[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (classes, 2)
    colour = np.random.default_rng([o.seed, 2]).uniform(0.3, 1.0, (num_classes, c))
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")

    def split(n: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        y = rng.permutation(np.arange(n) % num_classes)
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        contrast = rng.uniform(0.5, 1.0, (n, 1, 1, 1))
        grating = 0.5 + 0.5 * np.sin(wave[y, 0, None, None] * yy + wave[y, 1, None, None] * xx + phase)  # (n, H, W)
        x = 0.5 + contrast * colour[y][:, :, None, None] * (grating[:, None] - 0.5)
        x = np.clip(x + noise * rng.standard_normal(x.shape), 0.0, 1.0)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    x_tr, y_tr = split(n_train, rng_train)
    x_te, y_te = split(n_test, rng_test)
    log.warning("%s: data.synthetic=true: %d / %d synthetic %s images, no files read (not the real data)",
                name, n_train, n_test, "x".join(map(str, shape)))
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes=num_classes)
