"""The Hydra runner: config composition, bad input, end-to-end runs, faults, resume, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import sweep_params
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from odenet.runner.config import CONFIG_PATH, Config, load_config
from odenet.runner.train import TrainingDiverged, load_model, train_and_evaluate
from odenet.runner.validate import validate as check_config

CONF = Path(CONFIG_PATH)
REPO = CONF.parent
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "debug", "__pycache__"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Groups the primary config selects; others (train_solver: `# @package _global_` options) are added with `+`.
PRIMARY_GROUPS = {next(iter(d)) for d in OmegaConf.load(CONF / "config.yaml").defaults if not isinstance(d, str)}
SMOKE = ["+debug=smoke", "trainer.progress=false", "data=sphere2"]  # 2-D inputs (the primary default is digits)


def run_cli(args: list[str], cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "odenet.run", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def smoke_config(*overrides: str) -> Config:
    return load_config([*SMOKE, *overrides])  # type: ignore[return-value]


# --- composition -------------------------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options, group
    for option in options:
        if group not in PRIMARY_GROUPS:
            check_config(load_config([f"+{group}={option}"]))
            continue
        cfg = load_config([f"{group}={option}"])
        assert isinstance(cfg[group], dict) or OmegaConf.is_config(cfg[group])
        if group not in ("data",):  # data.root for mnist/cifar is checked when loading
            check_config(cfg)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = load_config([f"+experiment={name}", *SMOKE])
    check_config(cfg)
    assert cfg.trainer.iterations <= 20


def test_misspelt_key_fails_at_start():
    with pytest.raises(ConfigCompositionException) as err:
        load_config(["trainer.iteratons=5"])
    assert "iteratons" in str(err.value.__cause__ or err.value)


def test_wrong_type_fails_at_start():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        load_config(["trainer.iterations=many"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.name=imagenet", "data.name"),
        ("field.kind=transformer", "field.kind"),
        ("solver.name=rk45", "solver.name"),
        ("block.kind=dense", "block.kind"),
        ("optimizer.name=lbfgs", "optimizer.name"),
        ("evaluation.solvers=[{name: rk5, steps: 2}]", "evaluation.solvers"),
    ],
)
def test_unknown_names_list_the_valid_ones(override, key):
    with pytest.raises(ValueError, match=rf"{key}.*must be one of \["):
        check_config(load_config([override]))


def test_misspelt_key_in_an_experiment_file_fails(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("# @package _global_\nfield:\n  widht: 3\n")
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        load_config([f"hydra.searchpath=[file://{tmp_path}]", "+experiment=typo"])
    assert "widht" in str(err.value) + str(err.value.__cause__)


# --- training and evaluation in-process ---------------------------------------------------------


def test_run_writes_every_file_and_evaluates_all_solvers(tmp_path):
    cfg = smoke_config("evaluation.solvers=[{name: euler, step_factor: 1}, {name: rk4, steps: 16}, {name: dopri5}]")
    metrics = train_and_evaluate(cfg, tmp_path)
    for name in ("config.yaml", "history.csv", "metrics.json", "model.pt", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    evals = metrics["evaluations"]
    assert [(e["test_solver"], e["test_steps"]) for e in evals] == [("euler", 8), ("rk4", 16), ("dopri5", None)]
    assert evals[0]["is_train_solver"] and not any(e["is_train_solver"] for e in evals[1:])
    assert evals[1]["nfe"] == 64.0 and evals[2]["rtol"] == 1e-6
    assert all(e["status"] == "ok" and 0 <= e["accuracy"] <= 1 for e in evals)
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history[0].startswith("iteration,epoch,loss,accuracy,nfe_forward,nfe_backward")
    assert len(history) == 1 + 3  # 6 iterations, a row every 2
    model = load_model(tmp_path)
    x = torch.randn(5, 2)
    assert model(x).shape == (5, 2)


def test_same_seed_gives_identical_metrics(tmp_path):
    a = train_and_evaluate(smoke_config("seed=3"), tmp_path / "a")
    b = train_and_evaluate(smoke_config("seed=3"), tmp_path / "b")
    c = train_and_evaluate(smoke_config("seed=4"), tmp_path / "c")
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    assert a == b and a["evaluations"] != c["evaluations"]


def test_learned_steps_are_logged(tmp_path):
    metrics = train_and_evaluate(smoke_config("block=learned_steps", "solver.steps=4"), tmp_path)
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["h_0", "h_1", "h_2", "h_3"]
    assert sum(metrics["train"]["step_sizes"]) == pytest.approx(1.0)


def test_plain_net_marks_finer_solvers_failed_and_goes_on(tmp_path):
    metrics = train_and_evaluate(smoke_config("block=plain"), tmp_path)
    status = {e["test_solver"]: e["status"] for e in metrics["evaluations"]}
    assert status == {"euler": "ok", "midpoint": "failed", "rk4": "failed"}
    assert "shortcut=False" in metrics["evaluations"][1]["reason"]
    assert metrics["status"] == "ok"


def test_nan_loss_stops_with_a_clear_message_and_keeps_files(tmp_path):
    cfg = smoke_config("optimizer=sgd", "optimizer.lr=1e30", "optimizer.schedule=none", "trainer.iterations=40",
                       "trainer.log_every=1")
    with pytest.raises(TrainingDiverged, match="optimizer.lr"):
        train_and_evaluate(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "optimizer.lr" in metrics["reason"]
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "history.csv").is_file()


def test_ode_block_training_reports_backward_nfe_with_adjoint(tmp_path):
    metrics = train_and_evaluate(smoke_config("block=ode", "solver=dopri5", "solver.adjoint=true"), tmp_path)
    rows = (tmp_path / "history.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert int(last[header.index("nfe_backward")]) > 0 and int(last[header.index("nfe_forward")]) > 0
    assert metrics["train"]["steps"] is None and metrics["evaluations"][0]["test_solver"] == "dopri5"


def test_mnist_without_root_names_data_root(tmp_path):
    with pytest.raises(ValueError, match="data.root"):
        train_and_evaluate(smoke_config("data=mnist", "field=conv", "data.synthetic=false"), tmp_path)


# --- the command line ---------------------------------------------------------------------------


def test_cli_single_run(tmp_path):
    out = tmp_path / "run"
    proc = run_cli([*SMOKE, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["status"] == "ok"
    assert "accuracy" in proc.stdout + proc.stderr


def test_cli_unknown_dataset_fails_listing_valid_names(tmp_path):
    proc = run_cli([*SMOKE, "data.name=imagenet", f"hydra.run.dir={tmp_path / 'x'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "data.name must be one of" in proc.stderr


# Some smoke sweeps run only with -m slow (conftest.SLOW_SWEEPS); tests/test_images.py trains the cifar10 model
# in-process on CIFAR files it writes.
SWEEPS = sweep_params(EXPERIMENTS)


@pytest.mark.parametrize("name", SWEEPS)
def test_experiment_end_to_end_with_joblib(smoke_sweep, name):
    proc, sweep = smoke_sweep(name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(sweep.rglob("metrics.json"))
    assert metrics, proc.stderr[-2000:]
    assert all(json.loads(p.read_text())["status"] == "ok" for p in metrics)
    if name == "step_size_ablation":
        runs = [json.loads(p.read_text())["train"] for p in metrics]
        trained = sorted((t["solver"], t["steps"] or 0) for t in runs)  # dopri5: no fixed steps; 3 seeds a job
        assert trained == sorted(3 * ([("dopri5", 0)] + [("euler", n) for n in (2, 4, 8, 16, 32, 64)]))
        assert (sweep / "summary.csv").is_file() and (sweep / "report.md").is_file()


def test_sweep_survives_a_failing_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *SMOKE, "block=ode", "solver=dopri5", "solver.max_steps=1,1000", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (failed_dir,) = sweep.glob("*solver.max_steps=1,*")  # job folders are named by their overrides
    (ok_dir,) = sweep.glob("*solver.max_steps=1000,*")
    failed = json.loads((failed_dir / "metrics.json").read_text())
    ok = json.loads((ok_dir / "metrics.json").read_text())
    assert failed["status"] == "failed" and "max_steps" in failed["reason"]
    assert ok["status"] == "ok"
    assert (sweep / "summary.csv").is_file() and "max_steps" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *SMOKE, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.rglob("metrics.json"))
    assert seeds == [0, 1]


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    args = [*SMOKE, "trainer.iterations=300", "trainer.checkpoint_every=20", "trainer.log_every=20",
            "data.n_train=256", "solver.steps=32"]
    ref = tmp_path / "ref"
    assert run_cli([*args, f"hydra.run.dir={ref}"], cwd=tmp_path).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "odenet.run", *args, f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    done_before = torch.load(out / "checkpoint.pt", weights_only=True)["iteration"]
    assert 0 < done_before < 300

    resumed = run_cli([*args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint.pt'} at iteration {done_before}" in resumed.stdout + resumed.stderr
    assert (out / "metrics.json").read_text() == (ref / "metrics.json").read_text()


def test_installed_package_runs_from_any_directory(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (target / "odenet" / "conf" / "experiment" / "step_size_ablation.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli([*SMOKE, f"hydra.run.dir={elsewhere / 'run'}"], cwd=elsewhere, env={"PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (elsewhere / "run" / "metrics.json").is_file()
