"""The config section ``growth``: validation, the growth step in the training loop and its record in metrics.json,
a finished grown run's model reloaded, and a run resumed before or after the growth matching an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from odenet.runner.config import load_config
from odenet.runner.evaluate import evaluate
from odenet.runner.growth import growth_iteration
from odenet.runner.rundir import RunDir
from odenet.runner.train import load_data, train_and_evaluate
from odenet.runner.validate import ConfigError, validate

SMOKE = ["+debug=smoke", "trainer.progress=false", "threads=1"]
UNTIED = [*SMOKE, "field.untied=true", "field.depth=1", "solver.steps=2", "trainer.iterations=8",
          "trainer.checkpoint_every=2", "trainer.log_every=2", "evaluation=none"]


def grown(tmp_path: Path, *overrides: str) -> dict:
    metrics = train_and_evaluate(load_config([*UNTIED, *overrides]), tmp_path / "run")
    assert metrics["status"] == "ok"
    return metrics


def test_growth_iteration():
    assert growth_iteration(0.5, 1000) == 500
    assert growth_iteration(0.5, 8) == 4
    assert growth_iteration(0.01, 6) == 1 and growth_iteration(0.99, 6) == 5  # always inside the run


@pytest.mark.parametrize("overrides, key", [
    (["growth.mode=grow"], "growth.mode"),
    (["growth.mode=identity", "field.untied=false"], "field.untied=true"),
    (["growth.mode=identity", "solver.name=rk4"], "solver.name=euler"),
    (["growth.mode=refine", "block=plain"], "growth.mode=refine"),
    (["growth.mode=refine", "block=ode", "solver.name=dopri5", "field.untied=false"], "block=residual"),
    (["growth.mode=identity", "optimizer.schedule=cosine"], "optimizer.schedule=none"),
    (["growth.mode=refine", "adaptation.enabled=true", "field.untied=false"], "adaptation.enabled"),
    (["growth.mode=identity", "analysis.interpolation=true"], "analysis.interpolation"),
    (["growth.at=1.0"], "growth.at"),
    (["growth.insert=0"], "growth.insert"),
    (["growth.factor=1"], "growth.factor"),
])
def test_bad_growth_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(load_config([*UNTIED, *overrides]))


def test_none_and_control_validate_on_any_block():
    validate(load_config([*SMOKE, "block=ode", "solver.name=dopri5"]))
    validate(load_config([*SMOKE, "block=ode", "solver.name=dopri5", "growth.mode=control"]))


def test_identity_growth_keeps_the_loss_and_the_model_reloads(tmp_path):
    metrics = grown(tmp_path, "growth.mode=identity", "growth.insert=2")
    g = metrics["train"]["growth"]
    assert g["mode"] == "identity" and g["at"] == 4
    assert (g["steps_before"], g["steps_after"], g["T_before"], g["T_after"]) == (2, 4, 1.0, 2.0)
    assert g["loss_after"] == g["loss_before"] and g["accuracy_after"] == g["accuracy_before"]
    assert g["block_change"] == 0.0 and g["block_scale"] > 0
    assert metrics["train"]["steps"] == 4 and metrics["train"]["step_size"] == pytest.approx(0.5)
    assert g["parameters_after"] > metrics["train"]["parameters"]
    # the finished run's model is the grown architecture, and gives the recorded training loss
    run = RunDir(tmp_path / "run")
    model = run.load_model().eval()
    assert model.block.steps == 4
    data = load_data(run.config)
    again = evaluate(model, data.x_train, data.y_train, 1000)
    assert again["loss"] == pytest.approx(metrics["train"]["train_loss"], rel=1e-6)


def test_a_plain_nets_growth_and_the_control(tmp_path):
    plain = grown(tmp_path / "plain", "block=plain", "growth.mode=identity")["train"]["growth"]
    assert plain["steps_after"] == 3 and plain["loss_after"] != plain["loss_before"] and plain["block_change"] > 0
    default = grown(tmp_path / "default", "growth.mode=default")["train"]["growth"]
    assert default["loss_after"] != default["loss_before"]
    control = grown(tmp_path / "control", "growth.mode=control")
    g = control["train"]["growth"]
    assert g["steps_after"] == g["steps_before"] == 2 and g["loss_after"] == g["loss_before"]
    assert "growth" not in grown(tmp_path / "none")["train"]  # growth.mode=none: no record


def test_refinement_doubles_the_steps_and_records_the_euler_errors(tmp_path):
    g = grown(tmp_path, "field.untied=false", "growth.mode=refine")["train"]["growth"]
    assert (g["steps_before"], g["steps_after"], g["T_after"]) == (2, 4, 1.0)
    ref = g["refinement"]
    assert ref["change"] == pytest.approx(g["block_change"], rel=1e-5)
    assert 0 < ref["error_fine"] < ref["error_coarse"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [2, 6])  # before the growth (at 4) and after it
def test_a_resumed_grown_run_matches_an_uninterrupted_one(tmp_path, monkeypatch, crash_at):
    overrides = ["growth.mode=default", "growth.insert=2"]
    torch.manual_seed(0)
    reference = grown(tmp_path / "ref", *overrides)
    save = RunDir.save_checkpoint

    def save_then_crash(self, ckpt):
        save(self, ckpt)
        if ckpt["iteration"] == crash_at:
            raise Crash

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_crash)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_and_evaluate(load_config([*UNTIED, *overrides]), out)
    monkeypatch.undo()
    assert ("growth" in torch.load(out / "checkpoint.pt", weights_only=False)) and not (out / "metrics.json").exists()
    resumed = train_and_evaluate(load_config([*UNTIED, *overrides]), out)
    assert resumed["train"]["growth"] == reference["train"]["growth"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads((tmp_path / "ref" / "run" /
                                                                         "metrics.json").read_text())


def test_a_grown_run_refuses_to_resume_with_another_budget(tmp_path, monkeypatch):
    """The growth point is a fraction of the iterations, so with growth the budget defines the model: a run resumed
    with other trainer.iterations would never grow (or grow elsewhere), so it is refused like any changed key."""
    from odenet.runner.rundir import RunDirError

    save = RunDir.save_checkpoint

    def save_then_crash(self, ckpt):
        save(self, ckpt)
        if ckpt["iteration"] == 4:
            raise Crash

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_crash)
    out = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_and_evaluate(load_config([*UNTIED, "growth.mode=default", "growth.at=0.75"]), out)
    monkeypatch.undo()
    with pytest.raises(RunDirError, match="trainer.iterations"):
        train_and_evaluate(load_config([*UNTIED, "growth.mode=default", "growth.at=0.75", "trainer.iterations=4"]), out)
