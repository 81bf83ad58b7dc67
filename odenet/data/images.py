"""Image benchmarks: scikit-learn's bundled 8x8 digits, MNIST (IDX files) and CIFAR-10 (python batches).

Real sets with a fixed train/test split; ``n_train`` / ``n_test`` keep the first ``n`` examples after a
fixed shuffle that does not depend on ``seed``. Nothing is downloaded: MNIST and CIFAR-10 are read from
their standard files under ``data.root``, and data files are data, never code: IDX files are parsed byte
by byte, CIFAR-10's pickled batches go through a restricted unpickler (:class:`CifarUnpickler`) that
builds only dicts, lists, strings, bytes, numbers and numpy arrays and refuses anything else before it
runs. ``synthetic=True`` reads no files (:func:`~odenet.data.synthetic.synthetic_images`).
"""

from __future__ import annotations

import gzip
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._common import PIXEL_SCALE, _subsample_index, _to_tensors
from .registry import DataOptions, Dataset, register_dataset
from .synthetic import synthetic_images

# Seed of the digits train/test split (independent of ``seed``: the split never changes).
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST = 450


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
    except (OSError, EOFError, zlib.error) as err:  # missing, unreadable, not gzip, truncated or corrupt gzip
        raise ValueError(
            f"cannot read {path} ({type(err).__name__}: {err}): the file is damaged or truncated; "
            "re-download it, or check that data.root points at intact data files"
        ) from None


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array; ``ndim`` checks the number of dimensions.

    Layout: two zero bytes, a dtype code (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension and the data in row-major order.
    """
    path = Path(path)
    raw = _read_bytes(path)
    bad = f"{path} is not a valid IDX file"
    hint = "data.root must hold the original MNIST files (re-download a damaged or truncated one)"
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
        x, y = _to_tensors(images, labels, index, PIXEL_SCALE)
        splits.append((x.unsqueeze(1), y))
    (x_tr, y_tr), (x_te, y_te) = splits
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, num_classes=10)


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


# The globals a real CIFAR-10 batch's pickle refers to (dicts, lists, str, bytes and ints need none): numpy's
# ndarray reconstruction, under numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) module names, and
# ``_codecs.encode``, which Python 3 pickles of bytes use at protocol 2. Each builds plain data; none runs code.
_NUMPY_CORE = ("numpy.core", "numpy._core")
CIFAR_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(f"{core}.multiarray", "_reconstruct") for core in _NUMPY_CORE}  # ndarray, protocols 2-4
    | {(f"{core}.multiarray", "scalar") for core in _NUMPY_CORE}  # a numpy scalar (e.g. an int64 label)
    | {(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE}  # ndarray, protocol 5
)
"""``(module, name)`` pairs :class:`CifarUnpickler` admits; every other global is refused."""


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that :class:`CifarUnpickler` does not admit (nothing was called)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 batch holds: dicts, lists, str, bytes, numbers, numpy arrays.

    Every class or function a pickle names goes through :meth:`find_class`; outside
    :data:`CIFAR_PICKLE_GLOBALS` it raises :class:`ForbiddenGlobal` before anything is called, so a
    planted file cannot run code. Persistent ids are refused too (the base class's default).
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise ForbiddenGlobal(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):  # the other numpy major version's module name
            for old, new in (_NUMPY_CORE, _NUMPY_CORE[::-1]):
                if module.startswith(old + "."):
                    return super().find_class(new + module[len(old) :], name)
            raise


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    hint = "data.root must hold the CIFAR-10 python batches (cifar-10-python.tar.gz, extracted)"
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as err:
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: its pickle asks for {err.module}.{err.name}, which a CIFAR-10 batch "
            f"never holds; refused, nothing was executed. Replace it with the original file; {hint}"
        ) from None
    except Exception as err:  # any other unpickling failure means a damaged file
        raise ValueError(
            f"cannot read CIFAR-10 batch {path} ({type(err).__name__}: {err}): the file is damaged or truncated; "
            f"re-download cifar-10-python.tar.gz and extract it, or check data.root; {hint}"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict); {hint}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no data/labels keys); {hint}")
    try:
        data, labels = np.asarray(data, dtype=np.uint8), np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"{path} is not a CIFAR-10 batch (data/labels not numeric arrays: {err}); {hint}") from None
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
    x_tr, y_tr = _to_tensors(x_raw, y_raw, idx_tr, PIXEL_SCALE)
    del x_raw
    x_te_raw, y_te_raw = _read_cifar_batch(files["test_batch"])
    idx_te = _subsample_index(len(y_te_raw), o.n_test, "n_test", "cifar10", "test")
    x_te, y_te = _to_tensors(x_te_raw, y_te_raw, idx_te, PIXEL_SCALE)
    return Dataset("cifar10", x_tr.reshape(-1, 3, 32, 32), y_tr, x_te.reshape(-1, 3, 32, 32), y_te, num_classes=10)


