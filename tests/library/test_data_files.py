"""Data files are data, never code: CIFAR-10's pickled batches go through a restricted unpickler, and
damaged CIFAR-10 / MNIST files give one clear ValueError naming the file."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from odenet.data import CIFAR10_FILES, MNIST_FILES, load_dataset, read_idx

# ----------------------------------------------------------------------------- helpers


def _batch(n: int, rng: np.random.Generator, name: str = "training batch 1 of 5") -> dict:
    """A batch shaped like CIFAR-10's own: bytes keys, a uint8 (n, 3072) array, int labels, filenames."""
    return {
        b"batch_label": name.encode(),
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(folder: Path, n: int = 3, protocol: int = 2) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    batches = {}
    for name in CIFAR10_FILES:
        batches[name] = _batch(n, rng)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


class _SystemPayload:
    """Unpickling this runs a shell command (``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _ExecPayload:
    """Unpickling this runs Python code (``builtins.exec``) that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _EvalPayload(_ExecPayload):
    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


PAYLOADS = {"os.system": _SystemPayload, "exec": _ExecPayload, "eval": _EvalPayload}


def _planted(kind: str, marker: Path, wrap: bool) -> bytes:
    payload = PAYLOADS[kind](marker)
    if wrap:  # hidden in an otherwise real-looking batch
        batch = _batch(2, np.random.default_rng(0))
        batch[b"labels"] = payload
        return pickle.dumps(batch, protocol=2)
    return pickle.dumps(payload)


# ----------------------------------------------------------------------------- planted pickles


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_payloads_are_live_under_plain_pickle(tmp_path, kind):
    # the control: these files would run code under pickle.load (so the refusal below is meaningful)
    marker = tmp_path / "ran"
    pickle.loads(_planted(kind, marker, wrap=False))
    assert marker.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("target", ["data_batch_1", "data_batch_4", "test_batch"])
@pytest.mark.parametrize("wrap", [False, True])
def test_planted_batch_is_refused_and_nothing_runs(tmp_path, kind, target, wrap):
    root = tmp_path / "data"
    folder = root / "cifar-10-batches-py"
    _write_cifar(folder)
    marker = tmp_path / "pwned"
    planted = folder / target
    planted.write_bytes(_planted(kind, marker, wrap))
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", root=root)
    msg = str(err.value)
    assert str(planted) in msg
    assert "not a CIFAR-10 batch" in msg and "nothing was executed" in msg
    assert "data.root" in msg and "\n" not in msg
    assert not marker.exists()


def test_refusal_names_the_forbidden_global(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(_planted("exec", marker, wrap=True))
    with pytest.raises(ValueError, match=r"(__builtin__|builtins)\.exec") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(err.value) and not marker.exists()


def test_other_objects_are_refused_too(tmp_path):
    # not code execution, but not what a CIFAR-10 batch holds either: a set, an OrderedDict, a torch tensor
    from collections import OrderedDict

    for i, obj in enumerate(({1, 2}, OrderedDict(a=1), torch.zeros(2))):
        _write_cifar(tmp_path)
        (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": obj, b"labels": [0]}, protocol=2))
        with pytest.raises(ValueError, match="not a CIFAR-10 batch") as err:
            load_dataset("cifar10", root=tmp_path)
        assert str(tmp_path / "test_batch") in str(err.value), i


# ----------------------------------------------------------------------------- real batches still load


def _swap_numpy_core(raw: bytes, to: str) -> bytes:
    """A protocol-2 pickle with numpy's module names rewritten to numpy 1.x (``numpy.core``) or 2.x (``numpy._core``).

    Protocol 2 names globals as ``module\\nname\\n`` text with no length prefix, so the rewrite is safe.
    """
    raw = raw.replace(b"numpy._core.", b"numpy.core.")
    return raw.replace(b"numpy.core.", b"numpy._core.") if to == "2.x" else raw


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_shaped_batches_load(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", n=4, protocol=protocol)
    d = load_dataset("cifar10", root=tmp_path)
    train = np.concatenate([batches[name][b"data"] for name in CIFAR10_FILES[:-1]])
    assert torch.equal(d.x_train, torch.from_numpy(train).float().reshape(-1, 3, 32, 32) / 255)
    assert d.y_train.tolist() == sum((batches[name][b"labels"] for name in CIFAR10_FILES[:-1]), [])
    assert torch.equal(d.x_test, torch.from_numpy(batches["test_batch"][b"data"]).float().reshape(-1, 3, 32, 32) / 255)
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]


@pytest.mark.parametrize("numpy_names", ["1.x", "2.x"])
def test_batches_pickled_by_either_numpy_major_version_load(tmp_path, numpy_names):
    batches = _write_cifar(tmp_path, n=2)
    for name in CIFAR10_FILES:
        path = tmp_path / name
        path.write_bytes(_swap_numpy_core(path.read_bytes(), numpy_names))
    d = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(d.x_test, torch.from_numpy(batches["test_batch"][b"data"]).float().reshape(-1, 3, 32, 32) / 255)


def test_numpy_labels_and_str_keys_load(tmp_path):
    _write_cifar(tmp_path)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    labels = [np.int64(v) for v in (3, 0, 9)]  # numpy scalars, not ints
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=2))
    d = load_dataset("cifar10", root=tmp_path)
    assert d.y_test.tolist() == [3, 0, 9]
    assert torch.equal(d.x_test.reshape(3, -1), torch.from_numpy(data).float() / 255)


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated-half"),
        pytest.param(lambda raw: raw[:-1], id="truncated-last-byte"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"\x80\x02garbage", id="garbage"),
    ],
)
def test_damaged_batch_gives_one_clear_error(tmp_path, damage):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "re-download" in msg and "data.root" in msg and "\n" not in msg


def test_batch_that_is_not_a_dict_or_lacks_keys(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 99]}))
    with pytest.raises(ValueError, match="labels outside") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- MNIST IDX files


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_mnist(folder: Path, gz: bool) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 4, dtype=np.uint8),
    }
    assert set(arrays) == set(MNIST_FILES)
    paths = {}
    for name, arr in arrays.items():
        path = folder / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(_idx(arr)) if gz else _idx(arr))
        paths[name] = path
    return paths


@pytest.mark.parametrize("name", MNIST_FILES)
@pytest.mark.parametrize("cut", [3, 10, -1])  # inside the magic, inside the header / the dims, the last data byte
def test_truncated_idx_file_names_the_file(tmp_path, name, cut):
    path = _write_mnist(tmp_path, gz=False)[name]
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "data.root" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated-gzip"),
        pytest.param(lambda raw: raw[:12] + bytes(b ^ 0xFF for b in raw[12:-8]) + raw[-8:], id="corrupt-deflate"),
        pytest.param(lambda raw: raw[:-4] + b"\x00\x00\x00\x00", id="wrong-length-trailer"),
        pytest.param(lambda raw: b"not gzip at all", id="not-gzip"),
    ],
)
def test_damaged_gzip_idx_file_names_the_file(tmp_path, damage):
    path = _write_mnist(tmp_path, gz=True)["t10k-images-idx3-ubyte"]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError) as err:
        load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "data.root" in msg and "\n" not in msg


def test_read_idx_directly(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.idx"
    path.write_bytes(_idx(arr))
    assert np.array_equal(read_idx(path, ndim=3), arr)
    path.write_bytes(_idx(arr)[:-5])
    with pytest.raises(ValueError, match="need 24 data bytes, found 19") as err:
        read_idx(path)
    assert str(path) in str(err.value)
