"""Faults: a run folder holds one run, a failed start touches nothing, data files are never executed, `ok` is ok."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from odenet import MLPField, ResidualStack
from odenet.models import Classifier
from odenet.runner.config import load_config
from odenet.runner.evaluate import NonFiniteOutput, evaluate
from odenet.runner.rundir import RunDir, RunDirError
from odenet.runner.train import train_and_evaluate
from odenet.runner.validate import ConfigError

SMOKE = ["+debug=smoke", "trainer.progress=false"]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    metrics = train_and_evaluate(load_config(SMOKE), out)
    assert metrics["status"] == "ok"
    return out


@pytest.mark.parametrize("overrides, error, text", [
    (["optimizer.lr=-1"], ConfigError, "optimizer.lr"),
    (["data.name=mnist", "data.synthetic=false", "data.root=/nonexistent"], ValueError, "data.root"),
    (["field.kind=conv"], ValueError, "field.kind=conv"),
    (["seed=1"], RunDirError, "seed: 0 -> 1"),
    (["solver.steps=4"], RunDirError, "solver.steps: 8 -> 4"),
    (["optimizer.lr=0.5"], RunDirError, "optimizer.lr"),
])
def test_a_failed_start_leaves_a_finished_run_exactly_as_it_was(finished, overrides, error, text):
    before = snapshot(finished)
    with pytest.raises(error, match=text.replace("(", r"\(").replace(".", r"\.")):
        train_and_evaluate(load_config([*SMOKE, *overrides]), finished)
    assert snapshot(finished) == before


def test_a_mismatched_resume_says_how_to_start_over(finished):
    with pytest.raises(RunDirError, match="another output folder.*delete checkpoint.pt"):
        train_and_evaluate(load_config([*SMOKE, "seed=3"]), finished)


def test_resuming_the_same_config_keeps_the_files_and_numbers(finished):
    metrics = (finished / "metrics.json").read_text()
    config = snapshot(finished)["config.yaml"]
    train_and_evaluate(load_config(SMOKE), finished)
    assert (finished / "metrics.json").read_text() == metrics
    assert snapshot(finished)["config.yaml"] == config  # not even rewritten


def test_a_longer_run_continues_a_shorter_one_with_a_constant_lr(tmp_path):
    with pytest.raises(RunDirError, match="more than"):
        train_and_evaluate(load_config([*SMOKE, "trainer.iterations=4"]), tmp_path / "a")
        train_and_evaluate(load_config([*SMOKE, "trainer.iterations=2"]), tmp_path / "a")


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with RunDir(out).lock():
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            train_and_evaluate(load_config(SMOKE), out)
    assert not (out / "config.yaml").exists()
    train_and_evaluate(load_config(SMOKE), out)  # released: now it runs


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; from odenet.runner.rundir import RunDir\n"
            f"with RunDir({str(out)!r}).lock():\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            train_and_evaluate(load_config(SMOKE), out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert train_and_evaluate(load_config(SMOKE), out)["status"] == "ok"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_cifar_batch_runs_nothing_in_training(tmp_path):
    root, marker = tmp_path / "data", tmp_path / "pwned"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {b"data": np.zeros((10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="data_batch_1"):
        train_and_evaluate(load_config([*SMOKE, "data=cifar10", "field=conv", "data.synthetic=false",
                                        f"data.root={root}"]), out)
    assert not marker.exists()
    assert not (out / "config.yaml").exists()


def test_reordered_sweep_resumes_matching_jobs_and_never_mixes_them(tmp_path):
    sweep = tmp_path / "sweep"

    def run(seeds: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "odenet.run", "-m", *SMOKE, f"seed={seeds}", f"hydra.sweep.dir={sweep}"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert run("0,1").returncode == 0
    first = {d.name: (d / "model.pt").read_bytes() for d in sweep.iterdir() if (d / "model.pt").exists()}
    assert set(first) == {"seed=0", "seed=1"}
    proc = run("2,1,0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("resuming from") == 2
    for name, model in first.items():
        assert (sweep / name / "model.pt").read_bytes() == model
        assert RunDir(sweep / name).metrics["seed"] == int(name.split("=")[1])
    assert RunDir(sweep / "seed=2").metrics["status"] == "ok"


def _blowing_model() -> Classifier:
    field = MLPField(2, 8)
    with torch.no_grad():
        for p in field.parameters():
            p.fill_(1e38)
    return Classifier(nn.Identity(), ResidualStack(field, steps=4, scheme="rk4"), nn.Linear(2, 3))


def test_non_finite_outputs_are_never_an_ok_evaluation():
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    with pytest.raises(NonFiniteOutput, match="not finite"):
        evaluate(_blowing_model(), x, y, batch_size=8)


def test_a_blown_up_solver_is_a_failed_evaluation_not_ok():
    from odenet.data import load_dataset
    from odenet.runner.build import build_model
    from odenet.runner.evaluate import run_evaluations

    cfg = load_config([*SMOKE, "evaluation=step_factors"])
    data = load_dataset("sphere2", n_train=8, n_test=32)
    model = build_model(cfg, data.input_shape, data.num_classes)
    with torch.no_grad():
        for p in model.block.field.parameters():
            p.fill_(1e38)
    entries = run_evaluations(cfg, model, data, torch.device("cpu"))
    assert entries and all(e["status"] == "failed" for e in entries)
    fixed = [e for e in entries if e["test_steps"] is not None]
    assert fixed and all("not finite" in e["reason"] for e in fixed)
    assert all(e["accuracy"] is None for e in entries)


def test_every_run_records_its_thread_count(finished):
    assert RunDir(finished).metrics["threads"] == torch.get_num_threads()
    time.sleep(0)


def test_a_corrupt_checkpoint_is_one_error_naming_the_file(tmp_path):
    out = tmp_path / "run"
    train_and_evaluate(load_config([*SMOKE, "trainer.iterations=2"]), out)
    (out / "checkpoint.pt").write_bytes(b"not a torch file")
    before = snapshot(out)
    with pytest.raises(RunDirError, match=r"checkpoint\.pt: corrupt.*delete it"):
        train_and_evaluate(load_config([*SMOKE, "trainer.iterations=4"]), out)
    assert snapshot(out) == before
    (out / "model.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(RunDirError, match=r"model\.pt: corrupt"):
        RunDir(out).load_model()


def test_a_refused_cli_start_leaves_the_run_and_hydra_record_as_they_were(tmp_path):
    """Through the CLI: Hydra's own ``.hydra/`` record and log are the finished run's too, so a start refused on
    that folder (another seed) must leave them byte for byte; a fresh job folder still gets its record."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "odenet.run", *SMOKE, f"hydra.run.dir={out}", *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)

    assert cli().returncode == 0
    assert {"config.yaml", "hydra.yaml", "overrides.yaml"} <= {p.name for p in (out / ".hydra").iterdir()}
    before = snapshot(out)
    refused = cli("seed=1")
    assert refused.returncode == 2 and "seed: 0 -> 1" in refused.stderr
    assert snapshot(out) == before
