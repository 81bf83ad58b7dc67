"""The analysis step of a run (config ``analysis``), regression tasks, and the smoothness experiments
(degradation, gradient_flow, loss_landscape, depth_smoothness) with ``+debug=smoke``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import sweep_params
from omegaconf import OmegaConf

from odenet.analysis.depth import loglog_slope
from odenet.data import load_dataset
from odenet.fields import LinearField
from odenet.runner.build import build_model
from odenet.runner.config import load_config
from odenet.runner.train import train_and_evaluate

SMOKE = ["+debug=smoke", "trainer.progress=false"]
MEASUREMENTS = ("gradients", "landscape", "interpolation", "sharpness", "depth", "trajectory")
ALL = [f"analysis.{m}=true" for m in MEASUREMENTS]


def test_analysis_is_off_by_default(tmp_path):
    cfg = load_config(SMOKE)
    assert not any(cfg.analysis[k] for k in MEASUREMENTS)
    assert cfg.analysis.grid == 5 and load_config([]).analysis.grid == 21  # smoke shrinks the default 21 x 21
    metrics = train_and_evaluate(cfg, tmp_path)
    assert "analysis" not in metrics and metrics["task"] == "classification"


def test_analysis_step_writes_every_measurement(tmp_path):
    metrics = train_and_evaluate(load_config([*SMOKE, *ALL, "solver.steps=4"]), tmp_path)
    a = json.loads((tmp_path / "metrics.json").read_text())["analysis"]
    assert a == json.loads(json.dumps(metrics["analysis"]))
    for key in ("gradients_init", "gradients"):
        assert len(a[key]["norms"]) == 5 and a[key]["times"] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
        assert all(n > 0 for n in a[key]["norms"])
    assert len(a["landscape"]["slice_1d"]) == 5 and len(a["landscape"]["slice_2d"]) == 5
    assert all(len(row) == 5 for row in a["landscape"]["slice_2d"])
    # the centre of a slice is the trained model itself: its training-batch loss
    assert a["landscape"]["slice_1d"][2] == pytest.approx(a["landscape"]["slice_2d"][2][2], rel=1e-5)
    inter = a["interpolation"]
    assert inter["alphas"][0] == pytest.approx(-0.5) and inter["alphas"][-1] == pytest.approx(1.5)
    assert "_init_state" not in a
    assert set(a["sharpness"]) >= {"top_eigenvalue", "trace", "trace_stderr", "converged", "iterations"}
    assert "error" in a["depth"]  # a shared field has no depth index: recorded, the run goes on
    assert len(a["trajectory"]["step_speeds"]) == 4 and a["trajectory"]["kinetic_energy"] > 0


def test_plain_net_analysis_records_what_does_not_apply(tmp_path):
    metrics = train_and_evaluate(load_config([*SMOKE, "block=plain", "analysis.gradients=true",
                                              "analysis.trajectory=true"]), tmp_path)
    assert "no velocity" in metrics["analysis"]["trajectory"]["error"]
    assert len(metrics["analysis"]["gradients"]["norms"]) == 9


def test_analysis_of_an_adjoint_ode_block(tmp_path):
    metrics = train_and_evaluate(load_config([*SMOKE, "block=ode", "solver=dopri5", "solver.adjoint=true",
                                              "analysis.gradients=true", "analysis.sharpness=true",
                                              "analysis.gradient_times=4"]), tmp_path)
    a = metrics["analysis"]
    assert len(a["gradients"]["norms"]) == 5
    assert "error" not in a["sharpness"]  # measured on the direct (non-adjoint) solve of the same field


def test_linear_regression_data_is_identity_plus_noise():
    d = load_dataset("linear_regression", n_train=50, n_test=20, seed=3, noise=0.0)
    assert d.task == "regression" and d.num_classes == 2
    torch.testing.assert_close(d.y_train, d.x_train)  # noise 0: A = I
    d = load_dataset("linear_regression", n_train=200, seed=3, noise=0.5)
    A = torch.linalg.lstsq(d.x_train.double(), d.y_train.double()).solution.T
    torch.testing.assert_close(d.y_train.double(), d.x_train.double() @ A.T, atol=1e-5, rtol=0)
    assert (A - torch.eye(2, dtype=A.dtype)).abs().max() > 0.05


def test_tanh_ode_data_is_deterministic_and_nonlinear():
    a, b = load_dataset("tanh_ode", n_train=64, n_test=16), load_dataset("tanh_ode", n_train=64, n_test=16)
    torch.testing.assert_close(a.y_train, b.y_train)
    assert a.task == "regression" and a.y_train.shape == (64, 2)
    fit = torch.linalg.lstsq(a.x_train.double(), a.y_train.double()).solution
    assert float((a.x_train.double() @ fit - a.y_train.double()).pow(2).mean()) > 1e-3  # not a linear map


def test_zero_init_linear_field_and_identity_head():
    assert float(LinearField(3, zero_init=True).linear.weight.detach().abs().sum()) == 0
    cfg = load_config([*SMOKE, "data=linear_regression", "field=linear", "field.untied=true", "field.zero_init=true",
                       "model.head=identity", "solver.steps=5"])
    model = build_model(cfg, (2,), 2)
    x = torch.randn(7, 2)
    torch.testing.assert_close(model(x), x)  # W_k = 0: the identity map
    with pytest.raises(ValueError, match="model.head=identity"):
        build_model(load_config([*SMOKE, "model.head=identity", "model.width=4"]), (2,), 2)
    with pytest.raises(ValueError, match="model.head must be one of"):
        build_model(load_config([*SMOKE, "model.head=mlp"]), (2,), 2)


def test_regression_run_reports_mse_and_depth_smoothness(tmp_path):
    cfg = load_config([*SMOKE, "data=linear_regression", "field=linear", "field.untied=true", "field.zero_init=true",
                       "model.head=identity", "solver.steps=6", "analysis.depth=true", "trainer.iterations=20"])
    metrics = train_and_evaluate(cfg, tmp_path)
    ev = metrics["evaluations"][0]
    assert metrics["task"] == "regression" and ev["accuracy"] is None and ev["loss"] > 0
    assert metrics["train"]["train_accuracy"] is None
    d = metrics["analysis"]["depth"]
    assert d["layers"] == 6 and len(d["increments"]) == 5 and d["max"] > 0
    assert d["rss"] == pytest.approx(sum(v * v for v in d["increments"]) ** 0.5)


def test_adaptation_refuses_regression(tmp_path):
    cfg = load_config([*SMOKE, "data=tanh_ode", "model.head=identity", "adaptation.enabled=true"])
    with pytest.raises(ValueError, match="classification"):
        train_and_evaluate(cfg, tmp_path)


# --- the experiments, end to end in smoke mode (shares the session's smoke sweeps with test_run.py) -------------

EXPECTED = {  # run folders (smoke sweeps fix seed=0; depth_smoothness: 21 jobs x 3 ensemble seeds), heading, plots
    "degradation": (10, "## Degradation (plain vs residual)", ["degradation.png", "gradient_flow.png"]),
    "gradient_flow": (9, "## Gradient flow", ["gradient_flow.png"]),
    "loss_landscape": (6, "## Loss landscape and sharpness", ["landscape_2d.png", "landscape_1d.png"]),
    "depth_smoothness": (63, "## Smoothness in depth", ["depth_smoothness.png"]),
}


@pytest.mark.parametrize("name", sweep_params(sorted(EXPECTED)))
def test_smoothness_experiment_smoke(smoke_sweep, name):
    jobs, heading, pngs = EXPECTED[name]
    proc, sweep = smoke_sweep(name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.rglob("metrics.json"))]
    assert len(metrics) == jobs and all(m["status"] == "ok" for m in metrics)
    assert all("analysis" in m and not any("error" in v for v in m["analysis"].values()) for m in metrics)
    text = (sweep / "report.md").read_text()
    assert heading in text
    for png in pngs:
        assert (sweep / png).is_file() and (sweep / png).stat().st_size < 300_000


@pytest.mark.slow
def test_depth_smoothness_smoke_covers_both_tasks(smoke_sweep):
    proc, sweep = smoke_sweep("depth_smoothness")
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_task: dict[str, list[int]] = {}
    for p in sweep.rglob("metrics.json"):
        cfg = OmegaConf.load(p.parent / "config.yaml")
        task = f"{cfg.data.name}{'-tied' if cfg.field.tied_init else ''}"
        by_task.setdefault(task, []).append(json.loads(p.read_text())["analysis"]["depth"]["layers"])
    depths = sorted([4, 8, 16, 32, 64, 128, 256] * 3)  # seeds 0, 1, 2 of each job (trainer.ensemble=3)
    assert {k: sorted(v) for k, v in by_task.items()} == {
        "linear_regression": depths, "tanh_ode": depths, "tanh_ode-tied": depths}
    text = (sweep / "report.md").read_text()
    assert "### linear field on linear_regression (zero init)" in text and "Log-log slope in L" in text
    assert "### mlp field on tanh_ode (tied init)" in text


def test_tied_init_starts_every_step_from_the_same_weights():
    from odenet.analysis import depth_smoothness

    cfg = load_config([*SMOKE, "field=mlp_untied", "field.tied_init=true", "solver.steps=5"])
    assert depth_smoothness(build_model(cfg, (2,), 2).block.field).max == 0.0
    assert depth_smoothness(build_model(load_config([*SMOKE, "field=mlp_untied", "solver.steps=5"]), (2,), 2)
                            .block.field).max > 0
    with pytest.raises(ValueError, match="untied"):
        build_model(load_config([*SMOKE, "field.tied_init=true"]), (2,), 2)


def test_loglog_slope_of_the_report_is_the_analysis_one():
    assert loglog_slope([4, 8, 16], [1 / 4, 1 / 8, 1 / 16]).slope == pytest.approx(-1)
