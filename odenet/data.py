"""Data sets by name: synthetic 2D/nD classification problems and a few image benchmarks.

``load_dataset(name, ...)`` returns a :class:`Dataset` of CPU tensors (float32 inputs, int64
labels). Every loader in ``DATASETS`` takes one :class:`DataOptions` (``root``, ``n_train``,
``n_test``, ``seed``, ``dim``, ``noise``, ``as_images``) and uses the ones that apply to it:

* synthetic sets (``spirals``, ``sphere2``, ``concentric_spheres``) are generated from
  ``seed`` (train and test from separate streams, so the test set does not depend on
  ``n_train``); ``n_train`` / ``n_test`` are the numbers of points; ``root`` and
  ``as_images`` do not apply, ``dim`` only to ``concentric_spheres``.
* real sets (``digits``, ``mnist``, ``cifar10``) have a fixed train/test split;
  ``n_train`` / ``n_test`` keep the first ``n`` examples after a fixed shuffle that does not
  depend on ``seed`` (so smaller subsets are nested in larger ones); ``dim`` and ``noise`` do
  not apply. Nothing is downloaded: ``mnist`` and ``cifar10`` read the standard files under
  ``root``. With ``synthetic=True`` (``+debug=smoke`` sets it) they read no files and return
  class-patterned random images of the real shape instead (:func:`synthetic_images`), so tests
  and smoke runs of the image experiments need no data.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "TASKS", "DataOptions", "Dataset", "load_dataset", "register_dataset"]

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")

# Seed of the fixed shuffle that subsamples real data sets (independent of ``seed``).
_SUBSAMPLE_SEED = 0
# Seed of the digits train/test split (independent of ``seed``: the split never changes).
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST = 450


@dataclass
class Dataset:
    """A data set: float32 inputs ``(n, *input_shape)`` and int64 labels ``0..num_classes-1`` (classification)
    or float32 targets ``(n, num_classes)`` (``task="regression"``)."""

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    num_classes: int
    #: ``classification`` (int64 labels, cross-entropy) or ``regression`` (float32 targets ``(n, num_classes)``,
    #: mean squared error; ``num_classes`` is then the number of output features).
    task: str = "classification"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"dataset {self.name!r}: task must be one of {list(TASKS)}, got {self.task!r}")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"dataset {self.name!r}: inputs and labels differ in length "
                f"(train {len(self.x_train)} vs {len(self.y_train)}, test {len(self.x_test)} vs {len(self.y_test)})"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(2,)`` or ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def __str__(self) -> str:
        return (
            f"Dataset({self.name!r}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


@dataclass(frozen=True)
class DataOptions:
    """The options every loader receives; each uses those that apply to it (see its docstring)."""

    root: str | os.PathLike[str] | None = None
    n_train: int | None = None  # None: the data set's default size
    n_test: int | None = None
    seed: int = 0
    dim: int = 2
    noise: float | None = None  # None: the data set's default noise
    as_images: bool = False
    synthetic: bool = False  # mnist / cifar10: synthetic images of the real shape instead of the files


Loader = Callable[[DataOptions], Dataset]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader to ``DATASETS`` under ``name``.

    A loader takes a :class:`DataOptions` (using the options that apply) and returns a :class:`Dataset`.
    """

    def decorator(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    dim: int = 2,
    noise: float | None = None,
    as_images: bool = False,
    synthetic: bool = False,
) -> Dataset:
    """The data set ``name`` (see ``DATASETS``); ``None`` sizes and noise mean the data set's default."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; data.name must be one of {sorted(DATASETS)}")
    return DATASETS[name](
        DataOptions(
            root=root, n_train=n_train, n_test=n_test, seed=seed, dim=dim, noise=noise, as_images=as_images,
            synthetic=synthetic,
        )
    )


# --------------------------------------------------------------------------- checks and helpers


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


def _shuffled(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    perm = rng.permutation(len(y))
    return torch.from_numpy(x[perm].astype(np.float32)), torch.from_numpy(y[perm].astype(np.int64))


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


# --------------------------------------------------------------------------- synthetic data sets


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


# --------------------------------------------------------------------------- real data sets


@register_dataset("digits")
def load_digits(o: DataOptions) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to ``[0, 1]``.

    Inputs are vectors of 64, or ``1x8x8`` images with ``as_images=True``. The split is fixed
    (stratified, 1347 train / 450 test, ``random_state=0`` whatever ``seed``).
    Uses ``n_train, n_test, as_images``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x, y = np.asarray(bunch.data), np.asarray(bunch.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=_DIGITS_TEST, stratify=y, random_state=_DIGITS_SPLIT_SEED)
    idx_tr = _subsample_index(len(y_tr), o.n_train, "n_train", "digits", "training")
    idx_te = _subsample_index(len(y_te), o.n_test, "n_test", "digits", "test")
    shape = (1, 8, 8) if o.as_images else (64,)
    xt_tr, yt_tr = _to_tensors(x_tr, y_tr, idx_tr, 16.0)
    xt_te, yt_te = _to_tensors(x_te, y_te, idx_te, 16.0)
    return Dataset("digits", xt_tr.reshape(-1, *shape), yt_tr, xt_te.reshape(-1, *shape), yt_te, num_classes=10)


def _root_dirs(root: str | os.PathLike[str] | None, subdir: str) -> list[Path]:
    if root is None:
        return []
    base = Path(root).expanduser()
    return [base, base / subdir]


def _find_files(
    dataset: str,
    root: str | os.PathLike[str] | None,
    subdir: str,
    names: Sequence[str],
    suffixes: Sequence[str] = ("",),
) -> dict[str, Path]:
    """Each of ``names`` (with one of ``suffixes``) under ``root`` or ``root/subdir``; a ValueError otherwise."""
    dirs = _root_dirs(root, subdir)
    found: dict[str, Path] = {}
    for name in names:
        for d in dirs:
            hit = next((d / (name + s) for s in suffixes if (d / (name + s)).is_file()), None)
            if hit is not None:
                found[name] = hit
                break
    missing = [n for n in names if n not in found]
    if missing:
        opt = "[" + "|".join(s for s in suffixes if s) + "]" if any(suffixes) else ""
        wanted = ", ".join(n + opt for n in names)
        if root is None:
            where = "data.root is not set"
        elif not dirs[0].is_dir():
            where = f"{dirs[0]} is not a directory"
        else:
            where = f"looked in {dirs[0]} and {dirs[1]}; missing {', '.join(missing)}"
        raise ValueError(f"{dataset} needs data.root pointing at a folder with {wanted} ({where})")
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path} ({err}); data.root must hold intact data files") from None


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; ``ndim`` checks the number of dimensions.

    Layout: two zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension and the data in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    bad = f"{path} is not a valid IDX file"
    hint = "data.root must hold the original MNIST files"
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{bad} (bad magic number {raw[:4].hex() or 'empty'}); {hint}")
    if ndim is not None and raw[3] != ndim:
        raise ValueError(f"{bad} (magic {raw[:4].hex()}: {raw[3]} dimensions, expected {ndim}); {hint}")
    n_dims, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{bad} (truncated header); {hint}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{bad} (dims {dims} need {expected} data bytes, found {len(raw) - header}); {hint}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("mnist")
def load_mnist(o: DataOptions) -> Dataset:
    """MNIST from the four IDX files (each optionally ``.gz``) under ``root`` or ``root/MNIST/raw``.

    Images are ``1x28x28`` float32 in ``[0, 1]`` (always images: ``as_images`` does not apply);
    60000 train / 10000 test. Uses ``root, n_train, n_test``; ``synthetic`` reads no files
    (:func:`synthetic_images`, ``seed``).
    """
    if o.synthetic:
        return synthetic_images("mnist", (1, 28, 28), o)
    files = _find_files("mnist", o.root, os.path.join("MNIST", "raw"), MNIST_FILES, ("", ".gz"))
    splits = []
    for prefix, option, split in (("train", "n_train", "training"), ("t10k", "n_test", "test")):
        images = read_idx(files[f"{prefix}-images-idx3-ubyte"], ndim=3)
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"], ndim=1)
        if len(images) != len(labels) or images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise ValueError(
                f"mnist {split} files disagree: {images.shape} {images.dtype} images, {labels.shape} {labels.dtype} "
                "labels (expected uint8, one label per image); data.root must hold the original MNIST files"
            )
        if len(labels) and labels.max() > 9:
            raise ValueError(f"mnist {split} labels outside 0..9; data.root must hold the original MNIST files")
        index = _subsample_index(len(labels), o.n_train if prefix == "train" else o.n_test, option, "mnist", split)
        x, y = _to_tensors(images, labels, index, 255.0)
        splits.append((x.unsqueeze(1), y))
    (x_tr, y_tr), (x_te, y_te) = splits
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, num_classes=10)


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    hint = "data.root must hold the CIFAR-10 python batches (cifar-10-python.tar.gz, extracted)"
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as err:  # any unpickling failure means a bad file
        raise ValueError(f"cannot read CIFAR-10 batch {path} ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict); {hint}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels keys); {hint}")
    data, labels = np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} and {labels.shape} labels, expected (N, 3072) and (N,); {hint}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9; {hint}")
    return data, labels


@register_dataset("cifar10")
def load_cifar10(o: DataOptions) -> Dataset:
    """CIFAR-10 from the python batches under ``root`` or ``root/cifar-10-batches-py``.

    ``data_batch_1..5`` (50000 train) and ``test_batch`` (10000 test); images ``3x32x32``
    float32 in ``[0, 1]`` (always images). Uses ``root, n_train, n_test``; ``synthetic`` reads no
    files (:func:`synthetic_images`, ``seed``).
    """
    if o.synthetic:
        return synthetic_images("cifar10", (3, 32, 32), o)
    files = _find_files("cifar10", o.root, "cifar-10-batches-py", CIFAR10_FILES)
    train = [_read_cifar_batch(files[name]) for name in CIFAR10_FILES[:-1]]
    x_raw = np.concatenate([d for d, _ in train])
    y_raw = np.concatenate([lab for _, lab in train])
    del train
    idx_tr = _subsample_index(len(y_raw), o.n_train, "n_train", "cifar10", "training")
    x_tr, y_tr = _to_tensors(x_raw, y_raw, idx_tr, 255.0)
    del x_raw
    x_te_raw, y_te_raw = _read_cifar_batch(files["test_batch"])
    idx_te = _subsample_index(len(y_te_raw), o.n_test, "n_test", "cifar10", "test")
    x_te, y_te = _to_tensors(x_te_raw, y_te_raw, idx_te, 255.0)
    return Dataset("cifar10", x_tr.reshape(-1, 3, 32, 32), y_tr, x_te.reshape(-1, 3, 32, 32), y_te, num_classes=10)


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


# --------------------------------------------------------------------------- regression data sets


def _gaussian_inputs(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim))


@register_dataset("linear_regression")
def load_linear_regression(o: DataOptions) -> Dataset:
    """Sander et al. (2022)'s linear task: ``x ~ N(0, I_d)``, ``y = A x`` with ``A = I + noise * G``.

    ``G`` has i.i.d. standard normal entries drawn from ``seed`` (default ``noise`` 0.5, ``dim`` 2,
    1000 train / 1000 test points). A linear ResNet ``x_{k+1} = x_k + W_k x_k / L`` (``field=linear``,
    ``model.head=identity``) can fit it exactly. Uses ``n_train, n_test, seed, dim, noise``.
    """
    dim = _size("dim", o.dim, 2)
    rng_a = np.random.default_rng([_check_seed(o.seed), 2])
    A = np.eye(dim) + _noise(o.noise, 0.5) * rng_a.standard_normal((dim, dim))
    rng_tr, rng_te = _rngs(o.seed)
    x_tr = _gaussian_inputs(rng_tr, _size("n_train", o.n_train, 1000), dim)
    x_te = _gaussian_inputs(rng_te, _size("n_test", o.n_test, 1000), dim)
    f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return Dataset("linear_regression", f(x_tr), f(x_tr @ A.T), f(x_te), f(x_te @ A.T), num_classes=dim,
                   task="regression")


def _tanh_ode_targets(x: np.ndarray, W0: np.ndarray, W1: np.ndarray, b: np.ndarray, steps: int = 200) -> np.ndarray:
    """``x(1)`` of ``dx/dt = tanh((W0 + t W1) x + b)`` from ``x(0) = x`` by rk4 with ``steps`` steps."""

    def F(t: float, z: np.ndarray) -> np.ndarray:
        return np.tanh(z @ (W0 + t * W1).T + b)

    h, z = 1.0 / steps, x.copy()
    for k in range(steps):
        t = k * h
        k1 = F(t, z)
        k2 = F(t + h / 2, z + h / 2 * k1)
        k3 = F(t + h / 2, z + h / 2 * k2)
        k4 = F(t + h, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


@register_dataset("tanh_ode")
def load_tanh_ode(o: DataOptions) -> Dataset:
    """A nonlinear regression task in the spirit of Cohen et al. (2021)'s synthetic data.

    ``x ~ N(0, I_d)``; ``y = x(1)`` for the non-autonomous ODE ``dx/dt = tanh((W0 + t W1) x + b)``
    with a random smooth-in-time weight ``W(t) = W0 + t W1`` (entries ``N(0, 1/d)``, scaled by 2) and
    bias ``N(0, 0.25)``, drawn from ``seed``; integrated with rk4 (200 steps). Targets are generated
    by a smooth ODE, so a depth-indexed ResNet *can* fit them with weights smooth in depth.
    Default ``dim`` 2 (as configured), 1000 train / 1000 test points; ``noise`` (default 0) adds
    Gaussian noise to the training targets. Uses ``n_train, n_test, seed, dim, noise``.
    """
    dim = _size("dim", o.dim, 2)
    rng_w = np.random.default_rng([_check_seed(o.seed), 3])
    W0 = 2.0 * rng_w.standard_normal((dim, dim)) / math.sqrt(dim)
    W1 = 2.0 * rng_w.standard_normal((dim, dim)) / math.sqrt(dim)
    b = 0.5 * rng_w.standard_normal(dim)
    rng_tr, rng_te = _rngs(o.seed)
    x_tr = _gaussian_inputs(rng_tr, _size("n_train", o.n_train, 1000), dim)
    x_te = _gaussian_inputs(rng_te, _size("n_test", o.n_test, 1000), dim)
    y_tr = _tanh_ode_targets(x_tr, W0, W1, b) + _noise(o.noise, 0.0) * rng_tr.standard_normal(x_tr.shape)
    y_te = _tanh_ode_targets(x_te, W0, W1, b)
    f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return Dataset("tanh_ode", f(x_tr), f(y_tr), f(x_te), f(y_te), num_classes=dim, task="regression")
