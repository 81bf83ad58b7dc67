"""The identity_mapping experiment: its config, the identity data sets, the ``analysis.identity`` measurement on
models whose answer is known (a zero residual stack is the identity; a plain stack narrower than its input loses
rank), and a reduced smoke sweep with its report section and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from odenet.data import load_dataset
from odenet.reports import MAX_PNG_BYTES
from odenet.runner import measure
from odenet.runner.build import build_model
from odenet.runner.config import AnalysisConfig, experiment_dir, load_config


def test_config_fits_y_equals_x_at_unit_step_with_three_seeds():
    cfg = load_config(["+experiment=identity_mapping", "solver.steps=4"])
    assert cfg.block.T == 4 and cfg.model.head == "identity" and cfg.field.untied and cfg.analysis.identity
    sweep = OmegaConf.load(experiment_dir() / "identity_mapping.yaml").hydra.sweeper.params
    assert len(str(sweep["seed"]).split(",")) >= 3 and set(str(sweep["block"]).split(",")) == {"plain", "residual"}
    assert set(str(sweep["field.activation"]).split(",")) == {"relu", "tanh"}


def test_identity_data_sets_have_unit_variance_and_y_equal_x():
    d = load_dataset("digits_identity")
    assert d.task == "regression" and d.num_classes == 64 and torch.equal(d.x_train, d.y_train)
    assert float(d.x_train.mean(0).abs().max()) < 1e-5 and float(d.x_train.pow(2).mean()) == pytest.approx(1.0)
    assert torch.equal(d.x_test, d.y_test) and len(d.x_test) == 450
    g = load_dataset("linear_regression", dim=16, noise=0.0)  # conf/data/gaussian_identity.yaml: A = I
    assert torch.equal(g.x_train, g.y_train) and g.num_classes == 16


def _model(*overrides: str) -> torch.nn.Module:
    cfg = load_config(["+experiment=identity_mapping", "data=gaussian_identity", *overrides])
    return build_model(cfg, (16,), 16)


def test_identity_measurement_known_answers():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    cfg = AnalysisConfig(identity=True, seed=0)
    # A residual stack with zero last layers is the identity: full rank, the input recovered exactly.
    ident = measure.after_training(_model("block=residual", "field.zero_init=true"), x, x, torch.nn.functional.mse_loss,
                                   cfg)["identity"]
    assert "error" not in ident, ident
    assert ident["dim"] == 16 and ident["rank_mean"] == ident["rank_min"] == 16.0
    assert ident["r2"] == pytest.approx(1.0, abs=1e-9)
    # A plain stack of hidden width 8 < 16 squeezes every input through 8 units: rank at most 8.
    plain = measure.at_init(_model("block=plain", "field.hidden=8"), x, x, torch.nn.functional.mse_loss,
                            cfg)["identity_init"]
    assert plain["rank_mean"] <= 8.0 and plain["r2"] < 0.9
    layers = ident["random_layers"]
    assert layers["widths"] == [2, 4, 8, 16, 32, 64] and set(layers["r2"]) == {"relu", "tanh", "linear"}
    assert layers["rank"]["linear"] == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0]


@pytest.mark.slow  # 15 s: the slow step runs it (the default suite checks the config, data and measurement)
def test_identity_mapping_smoke_sweep(tmp_path):
    """Four smoke jobs (plain / residual at N = 1, 2) through the launcher, then the report's section and plot."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "odenet.run", "+experiment=identity_mapping", "+debug=smoke", "trainer.progress=false",
         "seed=0", "data=gaussian_identity", "solver.steps=2,1", "block=plain,residual", "field.activation=relu",
         "field.hidden=8", f"hydra.sweep.dir={sweep}", "hydra.callbacks.report.plots=always"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in sweep.rglob("metrics.json")]
    assert len(runs) == 4
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["train"]["step_size"] == 1.0
        assert "error" not in metrics["analysis"]["identity"] and "error" not in metrics["analysis"]["identity_init"]
    text = (sweep / "report.md").read_text()
    assert "## Identity mapping" in text and "| Gaussian (d=16) | relu | 8 |" in text
    assert "Gaussian (d=16), 1 seeds (random layers)" in text
    png = sweep / "identity_mapping.png"
    assert png.is_file() and 0 < png.stat().st_size <= MAX_PNG_BYTES
