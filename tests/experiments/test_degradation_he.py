"""The degradation_he experiment (He et al.'s staged net at h = 1): its config builds the published model and
optimiser, wrong combinations are refused, the report section's paired differences are the ones computed by hand on
tiny run folders, and a smoke sweep runs end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from odenet.models import count_parameters
from odenet.reports import ReportContext, registry
from odenet.reports.degradation import degradation_he_section, degradation_section
from odenet.runner.build import build_model, build_optimizer
from odenet.runner.config import load_config
from odenet.runner.errors import ConfigError
from odenet.runner.validate import validate
from odenet.staged import StagedNet, he_classifier

HE = ["+experiment=degradation_he"]


@pytest.mark.parametrize(("steps", "block"), [(3, "plain"), (27, "residual")])
def test_the_config_builds_he_et_al_s_net_and_optimiser(steps, block):
    cfg = load_config([*HE, f"solver.steps={steps}", f"block={block}"])
    validate(cfg)
    model = build_model(cfg, (1, 8, 8), 10)
    assert isinstance(model.block, StagedNet)
    assert model.block.shortcut == (block == "residual") and not model.block.preact
    assert model.block.depth == 2 * steps + 2 and model.block.n == steps // 3
    assert count_parameters(model) == count_parameters(he_classifier(1, 10, steps // 3))
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    opt, schedule = build_optimizer(cfg, model, 1000)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 0.9, 1e-4, False)
    assert sorted(schedule.milestones) == [500, 750] and schedule.gamma == 0.1  # 32k and 48k of 64k
    assert cfg.trainer.batch_size == 128 and cfg.data.as_images and cfg.data.augment == "none"


@pytest.mark.parametrize(("override", "match"), [
    ("solver.steps=10", "solver.steps = 3 n"), ("block=ode", "block=plain or residual"),
    ("field.untied=true", "field.untied=false"), ("model.arch=resnet", "model.arch must be one of"),
    ("regularization.kinetic=0.1", "no regularization"), ("trainer.ensemble=3", "trainer.ensemble=1"),
])
def test_wrong_combinations_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        validate(load_config([*HE, override]))


def test_vector_data_is_refused_at_build():
    with pytest.raises(ValueError, match="image data"):
        build_model(load_config([*HE, "data.as_images=false"]), (64,), 10)


# --- the report section on tiny run folders ---------------------------------------------------------------------

# (block, steps = 3n, seed) -> (train loss, train accuracy, test accuracy)
RUNS = {
    ("plain", 3, 0): (0.10, 0.99, 0.95), ("plain", 3, 1): (0.20, 0.98, 0.93),
    ("plain", 9, 0): (0.30, 0.97, 0.92), ("plain", 9, 1): (0.50, 0.95, 0.90),
    ("residual", 3, 0): (0.05, 1.00, 0.96), ("residual", 3, 1): (0.10, 0.99, 0.95),
    ("residual", 9, 0): (0.02, 1.00, 0.97), ("residual", 9, 1): (0.04, 1.00, 0.96),
}


def _metrics(block: str, steps: int, seed: int) -> dict[str, Any]:
    loss, train_acc, acc = RUNS[(block, steps, seed)]
    return {"status": "ok", "seed": seed, "task": "classification", "smoke": False, "baseline_accuracy": 0.1,
            "overrides": {"block": block, "solver.steps": str(steps), "seed": str(seed)},
            "train": {"solver": "euler", "steps": steps, "step_size": 1.0, "block": block, "train_loss": loss,
                      "train_accuracy": train_acc},
            "evaluations": [{"test_solver": "euler", "test_steps": steps, "test_step_size": 1.0, "accuracy": acc,
                             "loss": loss, "nfe": float(steps), "status": "ok", "is_train_solver": True}]}


def _sweep(root: Path, arch: str = "he") -> Path:
    for i, (block, steps, seed) in enumerate(RUNS):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / "metrics.json").write_text(json.dumps(_metrics(block, steps, seed)))
        (job / "config.yaml").write_text(f"model:\n  arch: {arch}\n")
    return root


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "PLOTS", {})


def test_he_section_reports_depths_and_paired_differences_by_hand(tmp_path: Path):
    ctx = ReportContext.load(_sweep(tmp_path))
    assert degradation_section(ctx) is None  # h = 1 staged nets are not the h = 1/N arm
    text = "\n".join(degradation_he_section(ctx))
    # depth 6n + 2 = 2 steps + 2: 8 and 20; plain train loss at 20: (0.3, 0.5) -> 4.00e-01 ± 1.41e-01
    assert "| 8 | 1.50e-01 ± 7.07e-02 | 7.50e-02 ± 3.54e-02 |" in text
    assert "| 20 | 4.00e-01 ± 1.41e-01 | 3.00e-02 ± 1.41e-02 |" in text
    # test error %: plain 20 = (8, 10) -> 9.00 ± 1.41; residual 20 = (3, 4) -> 3.50 ± 0.71
    assert "9.00 ± 1.41 | 3.50 ± 0.71 |" in text
    # residual - plain at 20, by seed: train loss (-0.28, -0.46); test error (-5, -6) points
    assert "| 20 | -3.70e-01 ± 1.27e-01 (0 of 2 > 0) |" in text
    assert "-5.50 ± 0.71 (0 of 2 > 0) |" in text
    # each block against depth 20: plain 8 - 20 = (-0.2, -0.3); residual 8 - 20 = (+0.03, +0.06)
    assert "| plain | 8 | -2.50e-01 ± 7.07e-02 (0 of 2 > 0) |" in text
    assert "| residual | 8 | +4.50e-02 ± 2.12e-02 (2 of 2 > 0) |" in text


@pytest.mark.parametrize("section", [degradation_he_section, degradation_section])
def test_runs_that_differ_beyond_block_depth_and_seed_are_not_pooled(tmp_path: Path, section):
    arch = "he" if section is degradation_he_section else "odenet"
    root = _sweep(tmp_path / "preact", arch=arch)
    extra = root / "extra"  # a second residual depth-9 run of seed 1, with another field: it would be pooled
    (extra / ".hydra").mkdir(parents=True)
    (extra / "metrics.json").write_text(json.dumps(_metrics("residual", 9, 1)))
    (extra / "config.yaml").write_text(f"model:\n  arch: {arch}\nfield:\n  preact: true\n")
    text = "\n".join(section(ReportContext.load(root)))
    assert "Not compared: the runs differ in config beyond block, depth and seed (field.preact: False, True)" in text
    assert "Paired by seed" not in text and "| 20 |" not in text
    # the same config twice for one seed: not one of them silently kept
    (extra / "config.yaml").write_text(f"model:\n  arch: {arch}\n")
    text = "\n".join(section(ReportContext.load(root)))
    assert "Not compared: residual at depth " in text and "more than one run of seed 1." in text


def test_odenet_stacks_stay_in_the_h_1_over_n_section(tmp_path: Path):
    ctx = ReportContext.load(_sweep(tmp_path, arch="odenet"))
    assert degradation_he_section(ctx) is None
    assert degradation_section(ctx) is not None


@pytest.mark.slow
def test_degradation_he_smoke_sweep(smoke_sweep):
    proc, sweep = smoke_sweep("degradation_he")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.rglob("metrics.json"))]
    assert len(metrics) == 10 and all(m["status"] == "ok" for m in metrics)
    assert sorted({m["train"]["steps"] for m in metrics}) == [3, 9, 15, 21, 27]
    assert {m["train"]["step_size"] for m in metrics} == {1.0}
    text = (sweep / "report.md").read_text()
    assert "## Degradation at h = 1 (He et al.'s staged net)" in text
    assert (sweep / "degradation_he.png").is_file()
