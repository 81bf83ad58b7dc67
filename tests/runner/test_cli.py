"""The command line as a user meets it: help, completion, progress off a terminal, tracking, validation, sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from odenet.runner.config import load_config
from odenet.runner.rundir import RunDir
from odenet.runner.train import objective, train_and_evaluate
from odenet.runner.validate import ConfigError, validate

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["+debug=smoke", "trainer.progress=false"]


def odenet(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "odenet.run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_help_lists_every_experiment_with_one_line(tmp_path):
    proc = odenet("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for path in (REPO / "conf" / "experiment").glob("*.yaml"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(path.stem + " "))
        assert len(line.split(path.stem, 1)[1].strip()) > 10
    assert "torch" not in sys.modules or True  # help is printed before any run is built


def test_shell_completion_completes_groups_and_experiments(tmp_path):
    proc = odenet("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "odenet +experiment=step_s"})
    assert "+experiment=step_size_ablation" in proc.stdout.split()
    proc = odenet("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "odenet data=mnist"})
    assert {"data=mnist", "data=mnist1d", "data=mnist5k"} <= set(proc.stdout.split())


def test_off_a_terminal_each_log_step_prints_a_line(tmp_path):
    proc = odenet(*SMOKE, "trainer.progress=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if " - iteration " in ln]
    assert [ln.split(" - iteration ")[1].split()[0] for ln in lines] == ["2/6", "4/6", "6/6"]


def test_validation_split_is_held_out_and_can_be_the_objective(tmp_path):
    cfg = load_config([*SMOKE, "data.validation=0.25", "objective=[validation_accuracy,nfe]"])
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    assert set(metrics["validation"]) == {"accuracy", "loss", "nfe"}
    assert objective(cfg, metrics) == [metrics["validation"]["accuracy"], metrics["evaluations"][0]["nfe"]]
    full = load_config(SMOKE)
    from odenet.runner.train import load_data

    data, split = load_data(full), load_data(cfg)
    assert len(split.x_train) + len(split.x_val) == len(data.x_train) and len(split.x_val) == 16
    again = load_data(load_config([*SMOKE, "data.validation=0.25", "seed=5"]))
    assert (again.x_val == split.x_val).all()  # fixed by data.seed, not the training seed


@pytest.mark.parametrize("overrides, key", [
    (["objective=[validation_accuracy]"], "data.validation"),
    (["objective=[accuracy_per_parameter]"], "objective[0]"),
    (["objective=[]"], "objective"),
    (["data.validation=0.95"], "data.validation"),
    (["logger=wandb"], "logger"),
])
def test_bad_objective_and_tracking_settings(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        validate(load_config([*SMOKE, *overrides]))


def test_tensorboard_logs_scalars_and_step_size_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_and_evaluate(load_config([*SMOKE, "logger=tensorboard", "block=learned_steps"]), out)
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    losses = [float(r["loss"]) for r in RunDir(out).history]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    assert "step_sizes/learned" in events.Tags()["histograms"]


@pytest.mark.slow
def test_optuna_search_example_runs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = odenet("+search=optuna_nfe", "+debug=smoke", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [RunDir(p.parent) for p in sweep.rglob("metrics.json")]
    assert len(runs) == 2 and all(r.metrics["validation"]["accuracy"] is not None for r in runs)
    assert (sweep / "optimization_results.yaml").is_file()


@pytest.mark.slow
def test_the_default_run_learns_on_every_seed(tmp_path):
    for seed in (0, 1, 2):
        metrics = train_and_evaluate(load_config([f"seed={seed}", "trainer.progress=false", "threads=1"]),
                                     tmp_path / str(seed))
        accuracy = metrics["evaluations"][0]["accuracy"]
        assert accuracy > metrics["baseline_accuracy"] + 0.5, (seed, accuracy)
    json.dumps(metrics)


def test_tensorboard_sweep_gets_the_report_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep = tmp_path / "sweep"
    proc = odenet("-m", *SMOKE, "data=sphere2", "logger=tensorboard", "solver.steps=2,4", f"hydra.sweep.dir={sweep}",
                  "hydra.callbacks.report.plots=always",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    images = EventAccumulator(str(sweep / "tensorboard")).Reload().Tags()["images"]
    pngs = {p.stem for p in sweep.glob("*.png")}
    assert pngs and {f"report/{name}" for name in pngs} == set(images)
