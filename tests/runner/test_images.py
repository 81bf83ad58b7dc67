"""Issue 7, images at scale: Chen et al.'s image ODE-Net on one shared conv field, synthetic smoke images,
on-device augmentation, mixed precision, torch.compile, the mnist_odenet / cifar10_odenet experiments and
benchmarks/gpu.py. GPU-only paths are skipped without CUDA; the compile test is ``slow`` (needs gcc)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from odenet import ConvField, ODEBlock, ResidualStack
from odenet.data import SYNTHETIC_SIZES, load_dataset
from odenet.models import amp_safe, parameter_breakdown
from odenet.runner.accel import augment_images, grad_scaler
from odenet.runner.build import build_model
from odenet.runner.config import load_config
from odenet.runner.train import train_and_evaluate
from odenet.runner.validate import validate as check_config

SMOKE = ["+debug=smoke", "trainer.progress=false"]
REPO = Path(__file__).resolve().parents[2]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SWEPT = ["euler_1", "euler_2", "euler_4", "euler_8", "dopri5", "dopri5_adjoint"]  # the experiments' sweep
INTEGRATORS = [*SWEPT, "euler_16"]
# Chen et al.'s MNIST ODE-Net (torchdiffeq examples/odenet_mnist.py prints "Number of parameters: 208266").
CHEN_MNIST = {"stem": 132_096, "field": 75_392, "block_other": 0, "head": 778, "total": 208_266}


def image_config(experiment: str = "mnist_odenet", integrator: str = "euler_2", *overrides: str):
    return load_config([f"+experiment={experiment}", *SMOKE, f"+integrator={integrator}", *overrides])


# --- the model family ---------------------------------------------------------------------------


@pytest.mark.parametrize("integrator", ["euler_8", "dopri5_adjoint"])
def test_resnet_and_odenet_are_one_model_with_chen_parameter_counts(integrator):
    cfg = image_config("mnist_odenet", integrator)
    check_config(cfg)
    model = build_model(cfg, (1, 28, 28), 10)
    assert parameter_breakdown(model) == CHEN_MNIST
    expected = ResidualStack if integrator.startswith("euler") else ODEBlock
    assert type(model.block) is expected
    reference = build_model(image_config("mnist_odenet", "euler_1"), (1, 28, 28), 10)
    assert model.state_dict().keys() == reference.state_dict().keys()  # a ResNet's weights load into the ODE-Net
    x = torch.rand(3, 1, 28, 28)
    assert model.stem(x).shape == (3, 64, 6, 6)
    assert model(x).shape == (3, 10)


def test_cifar10_model_shapes_and_untied_resnet_parameters():
    model = build_model(image_config("cifar10_odenet", "euler_2"), (3, 32, 32), 10)
    x = torch.rand(2, 3, 32, 32)
    assert model.stem(x).shape == (2, 64, 7, 7) and model(x).shape == (2, 10)
    assert parameter_breakdown(model)["total"] == 208_266 + 2 * 9 * 64  # a 3-channel first conv
    # Chen et al.'s ResNet has 6 blocks with their own weights (0.60M): field.untied over 6 Euler steps.
    untied_cfg = image_config("mnist_odenet", "euler_2", "solver.steps=6", "field.untied=true")
    untied = build_model(untied_cfg, (1, 28, 28), 10)
    counts = parameter_breakdown(untied)
    assert counts["field"] == 6 * CHEN_MNIST["field"] and counts["total"] == 585_226


def test_chen_field_is_norm_relu_conv_norm_relu_conv_norm():
    torch.manual_seed(0)
    field = ConvField(8, 8, depth=2, activation="relu", time="concat", groupnorm=True, groups=4, preact=True)
    x, t = torch.randn(2, 8, 5, 5), torch.tensor(0.3)

    def conv(layer: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
        return layer(torch.cat([z, torch.full_like(z[:, :1], 0.3)], dim=1))

    out = torch.relu(field.pre_norm(x))
    out = torch.relu(field.norms[0](conv(field.convs[0], out)))
    out = field.norms[1](conv(field.convs[1], out))
    torch.testing.assert_close(field(t, x), out)
    plain = ConvField(8, 8, groupnorm=True, groups=4)
    assert not any(k.startswith("pre_norm") for k in plain.state_dict())  # preact=False keeps the old keys
    with pytest.raises(ValueError, match="groups"):
        ConvField(6, 8, groupnorm=True, groups=4, preact=True)


def test_check_config_names_the_bad_image_key():
    for override, key in [("model.stem=pyramid", "model.stem"), ("trainer.amp_dtype=half", "trainer.amp_dtype"),
                          ("data.augment=rotate", "data.augment"), ("data.crop_padding=-1", "data.crop_padding")]:
        with pytest.raises(ValueError, match=key):
            check_config(image_config("mnist_odenet", "euler_2", override))
    with pytest.raises(ValueError, match="field.kind=conv"):
        check_config(load_config([*SMOKE, "model.stem=downsample"]))


# --- synthetic images and augmentation ----------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_synthetic_images_have_the_real_shape_and_are_learnable(name, shape):
    d = load_dataset(name, synthetic=True, seed=3)
    assert d.input_shape == shape and d.num_classes == 10
    assert (len(d.x_train), len(d.x_test)) == SYNTHETIC_SIZES
    assert d.x_train.dtype == torch.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert torch.bincount(d.y_train).tolist() == [SYNTHETIC_SIZES[0] // 10] * 10
    again, other = load_dataset(name, synthetic=True, seed=3), load_dataset(name, synthetic=True, seed=4)
    assert torch.equal(again.x_train, d.x_train) and not torch.equal(other.x_train, d.x_train)
    # learnable and shift-invariant: the nearest class mean of the amplitude spectra classifies the test images
    def spectrum(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x - x.mean((-2, -1), keepdim=True)).abs().flatten(1)

    means = torch.stack([spectrum(d.x_train[d.y_train == c]).mean(0) for c in range(10)])
    predicted = torch.cdist(spectrum(d.x_test), means).argmin(1)
    assert (predicted == d.y_test).float().mean() > 0.9
    small = load_dataset(name, synthetic=True, n_train=12, n_test=5)
    assert (len(small.x_train), len(small.x_test)) == (12, 5)


def test_smoke_makes_only_image_data_synthetic(tmp_path):
    assert image_config().data.synthetic is True
    assert load_config(["+experiment=mnist_odenet"]).data.synthetic is False
    a = load_dataset("sphere2", n_train=20, n_test=10, synthetic=True)
    b = load_dataset("sphere2", n_train=20, n_test=10)
    assert torch.equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match="data.root"):  # without the flag MNIST needs its files
        load_dataset("mnist")


def test_augment_images_crops_and_flips_on_the_device():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 6, 7, generator=g)
    assert augment_images(x, "none") is x
    assert torch.equal(augment_images(x, "crop", padding=0), x)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    crops = augment_images(x, "crop", padding=2, generator=torch.Generator().manual_seed(1))
    assert crops.shape == x.shape
    for img, pad in zip(crops, padded):
        windows = [pad[:, i : i + 6, j : j + 7] for i in range(5) for j in range(5)]
        assert any(torch.equal(img, w) for w in windows)
    assert not torch.equal(crops, x)
    flips = augment_images(x, "flip", generator=torch.Generator().manual_seed(2))
    mirrored = [torch.equal(f, o.flip(-1)) for f, o in zip(flips, x)]
    assert all(m or torch.equal(f, o) for m, f, o in zip(mirrored, flips, x)) and 0 < sum(mirrored) < 16
    both = augment_images(x, "crop_flip", generator=torch.Generator().manual_seed(3))
    assert both.shape == x.shape
    with pytest.raises(ValueError, match="image batches"):
        augment_images(torch.rand(4, 5), "crop")


# --- mixed precision ------------------------------------------------------------------------------


def _field_dtypes(model) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.block.field.convs[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("integrator, field_dtype", [("euler_2", torch.bfloat16), ("dopri5", torch.float32)])
def test_amp_autocasts_fixed_steps_but_keeps_adaptive_blocks_in_float32(integrator, field_dtype):
    model = build_model(image_config("mnist_odenet", integrator, "trainer.amp=true"), (1, 28, 28), 10)
    assert model.amp_dtype == torch.bfloat16 and amp_safe(model.block) == (integrator == "euler_2")
    seen = _field_dtypes(model)
    logits = model(torch.rand(4, 1, 28, 28))
    assert logits.dtype == torch.float32 and set(seen) == {field_dtype}
    logits.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    fine = model.with_solver("euler", steps=4)  # evaluations keep the precision
    assert fine.amp_dtype == torch.bfloat16
    scaler = grad_scaler(model, torch.device("cpu"))
    assert not scaler.is_enabled()  # bfloat16 needs no loss scaling


# --- training end to end ----------------------------------------------------------------------------


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_train_mnist_odenet_from_small_idx_files(tmp_path):
    """The real-file path: IDX files the test writes, Chen's model, crops, float16 autocast with a GradScaler."""
    rng = np.random.default_rng(0)
    root = tmp_path / "MNIST" / "raw"
    root.mkdir(parents=True)
    for prefix, n in (("train", 24), ("t10k", 8)):
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, n, dtype=np.uint8)))
    cfg = image_config("mnist_odenet", "euler_1", "data.synthetic=false", f"data.root={tmp_path}", "data.n_train=null",
                       "data.n_test=null", "trainer.iterations=2", "trainer.batch_size=8", "evaluation=none",
                       "trainer.amp=true", "trainer.amp_dtype=float16", "threads=1")
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics["status"] == "ok" and metrics["train"]["parameter_breakdown"] == CHEN_MNIST
    assert metrics["train"]["iterations"] == 2 and len(metrics["evaluations"]) == 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train"]["parameter_breakdown"]["total"] == 208_266


def test_train_cifar10_odenet_from_small_batches_adjoint(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    cfg = image_config("cifar10_odenet", "dopri5_adjoint", "data.synthetic=false", f"data.root={tmp_path}",
                       "data.n_train=null", "data.n_test=null", "trainer.iterations=2", "trainer.batch_size=8",
                       "evaluation=none", "threads=1")
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    assert metrics["status"] == "ok" and metrics["train"]["parameters"] == 209_418
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert int(history[-1]["nfe_backward"]) > 0  # the adjoint's backward solve


def test_smoke_training_on_synthetic_images_learns(tmp_path):
    """A narrow model on synthetic MNIST-shaped images gets well above chance (10%) in a few dozen steps."""
    cfg = image_config("mnist_odenet", "euler_2", "model.width=16", "field.hidden=16", "field.groups=8",
                       "trainer.iterations=60", "data.n_train=256", "optimizer.lr=0.03", "optimizer.schedule=none",
                       "evaluation=none", "threads=1")
    metrics = train_and_evaluate(cfg, tmp_path)
    assert metrics["train"]["train_accuracy"] > 0.35, metrics["train"]  # 0.62 with torch 2.13 on CPU
    assert metrics["evaluations"][0]["accuracy"] > 0.3


@pytest.mark.slow
def test_mnist_odenet_smoke_sweep(smoke_sweep):
    """``+experiment=mnist_odenet +debug=smoke``: the six integrators on synthetic images, one shared model."""
    proc, sweep = smoke_sweep("mnist_odenet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert {r["integrator"] for r in rows} == set(SWEPT)
    assert all(r["status"] == "ok" for r in rows)
    for integrator in SWEPT:
        mine = [r for r in rows if r["integrator"] == integrator]
        tested = {(r["test_solver"], r["test_steps"]) for r in mine}
        assert {("euler", str(n)) for n in (1, 2, 4, 8, 16)} | {("rk4", "4"), ("dopri5", "")} == tested
        (reference,) = [r for r in mine if r["test_solver"] == "dopri5" and r["is_train_solver"] == "False"]
        assert float(reference["rtol"]) == 1e-5
    runs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert len(runs) == len(SWEPT)
    assert all(m["train"]["parameter_breakdown"] == CHEN_MNIST for m in runs)  # step size is all that changes
    assert "parameters: stem 132,096 + field 75,392 + head 778 = 208,266" in proc.stdout + proc.stderr


def test_both_experiments_sweep_the_same_integrators():
    """Each ``+integrator=`` option composes (tests/test_run.py); here: the sweeps and the step sizes."""
    for experiment in ("mnist_odenet", "cifar10_odenet"):
        sweep = OmegaConf.load(REPO / "conf" / "experiment" / f"{experiment}.yaml").hydra.sweeper.params["+integrator"]
        assert set(sweep.split(",")) == set(SWEPT)
    options = {p.stem: OmegaConf.load(p) for p in (REPO / "conf" / "integrator").glob("*.yaml")}
    assert set(options) == set(INTEGRATORS)
    for name, option in options.items():
        if name.startswith("euler_"):
            assert option.block.kind == "residual" and option.solver.steps == int(name.split("_")[1])
        else:
            assert option.block.kind == "ode" and option.solver.adjoint == name.endswith("adjoint")


# --- benchmark, compile, GPU ---------------------------------------------------------------------


def _benchmark():
    spec = importlib.util.spec_from_file_location("odenet_gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_quick_runs_on_cpu(capsys):
    assert _benchmark().main(["--quick", "--device", "cpu", "--steps", "1", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("ResidualStack euler N=1", "ResidualStack euler N=2", "ODEBlock dopri5 |", "ODEBlock dopri5 adjoint"):
        assert f"| {row}" in out
    assert "| n/a |" in out and "device: CPU" in out


@pytest.mark.slow
def test_compiled_field_trains_and_keeps_state_dict_keys(tmp_path):
    cfg = image_config("mnist_odenet", "euler_2", "model.width=16", "field.hidden=16", "trainer.iterations=2",
                       "evaluation=none", "trainer.compile=true", "threads=1")
    metrics = train_and_evaluate(cfg, tmp_path)
    assert metrics["status"] == "ok"
    keys = torch.load(tmp_path / "model.pt", weights_only=True).keys()
    assert not any("_orig_mod" in k for k in keys)
    assert keys == build_model(cfg, (1, 28, 28), 10).state_dict().keys()


@CUDA
def test_cuda_float16_amp_training_and_auto_device(tmp_path):
    cfg = image_config("mnist_odenet", "euler_2", "device=auto", "trainer.amp=true", "trainer.amp_dtype=float16",
                       "trainer.iterations=3", "evaluation=none")
    metrics = train_and_evaluate(cfg, tmp_path)
    assert metrics["status"] == "ok"
    model = build_model(cfg, (1, 28, 28), 10).cuda()
    assert grad_scaler(model, torch.device("cuda")).is_enabled()
    seen = _field_dtypes(model)
    assert model(torch.rand(2, 1, 28, 28, device="cuda")).dtype == torch.float32 and set(seen) == {torch.float16}


@CUDA
def test_gpu_benchmark_quick_on_cuda(capsys):
    assert _benchmark().main(["--quick", "--device", "cuda", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "CUDA" in out and "| n/a |" not in out
