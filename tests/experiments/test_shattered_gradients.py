"""The shattered_gradients experiment: its configs (h = 1 and h = 1/N, the ODE block, He init), the
``analysis.shattering`` measurement at init and trained, and a small smoke sweep with its report section and plots."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import odenet
from odenet.analysis import line_gradients
from odenet.models import Classifier
from odenet.reports import MAX_PNG_BYTES
from odenet.runner import measure
from odenet.runner.build import build_model
from odenet.runner.config import AnalysisConfig, load_config
from odenet.runner.errors import ConfigError
from odenet.runner.validate import validate

BLOCKS = ("plain", "residual_h1", "residual_h1n", "ode")


@pytest.mark.parametrize("steps", [1, 8])
def test_the_four_blocks_and_their_step_sizes(steps):
    cfgs = {b: load_config(["+experiment=shattered_gradients", f"solver.steps={steps}", f"+shattering_block={b}"])
            for b in BLOCKS}
    for cfg in cfgs.values():
        validate(cfg)
        assert cfg.field.activation == "relu" and cfg.analysis.shattering
    assert cfgs["plain"].block.kind == "plain" and cfgs["plain"].field.untied
    assert cfgs["residual_h1"].block.T / steps == 1.0 and cfgs["residual_h1"].field.untied  # h = T / N = 1
    assert cfgs["residual_h1n"].block.T == 1.0 and cfgs["residual_h1n"].field.untied  # h = 1 / N
    ode = cfgs["ode"]
    assert ode.block.kind == "ode" and ode.solver.name == "rk4" and not ode.field.untied and ode.block.T == 1.0
    model = build_model(cfgs["residual_h1"], (64,), 10)
    assert isinstance(model.block, odenet.ResidualStack) and torch.allclose(model.block.step_sizes, torch.ones(steps))


def test_he_init_is_variance_preserving_for_relu():
    torch.manual_seed(0)
    cfg = load_config(["+experiment=shattered_gradients", "solver.steps=4", "+shattering_block=plain", "field.init=he",
                       "model.width=400", "field.hidden=400"])
    validate(cfg)
    layers = build_model(cfg, (64,), 10).block.field.layers
    assert len(layers) == 4
    for layer in layers:
        first, last = layer.linears
        assert first.weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)  # before the ReLU
        assert last.weight.std().item() == pytest.approx(math.sqrt(1 / 400), rel=0.02)
        assert not first.bias.any() and not last.bias.any()
    default = build_model(load_config(["+experiment=shattered_gradients", "+shattering_block=plain",
                                       "model.width=400", "field.hidden=400"]), (64,), 10)
    w = default.block.field.layers[0].linears[0].weight
    assert w.std().item() == pytest.approx(math.sqrt(1 / 1200), rel=0.02)  # PyTorch's U(+-1/sqrt(fan_in))
    with pytest.raises(ConfigError, match="field.init=he applies to field.kind=mlp"):
        validate(load_config(["field.kind=linear", "field.init=he"]))
    with pytest.raises(ConfigError, match="field.init"):
        validate(load_config(["field.init=orthogonal"]))


def test_the_measurement_at_init_and_trained():
    torch.manual_seed(0)
    field = odenet.MLPField(8, 16, 1, "relu")
    model = Classifier(nn.Linear(5, 8), odenet.ResidualStack(field, steps=3), nn.Linear(8, 4)).eval()
    x, y = torch.randn(20, 5), torch.tensor([0, 0, 1, 2, 2, 2, 3, 1] + [0] * 12)
    cfg = AnalysisConfig(shattering=True, shattering_lines=3, shattering_points=32, seed=5)
    loss = nn.functional.cross_entropy
    init = measure.at_init(model, x, y, loss, cfg)["shattering_init"]
    trained = measure.after_training(model, x, y, loss, cfg)["shattering"]
    assert init["pairs"] == [[0, 2], [3, 6], [7, 8]] and init["points"] == 32
    expected = line_gradients(model, x[0], x[2], points=32, seed=5).grads
    assert torch.allclose(torch.tensor(init["example"], dtype=torch.float64), expected.double())
    assert len(init["lag1"]) == len(init["slope"]) == 3 and len(init["autocorrelation"]) == 32
    assert init["lag1_mean"] == pytest.approx(sum(init["lag1"]) / 3)
    assert len(init["power"]) == len(init["frequencies"]) == 16
    for key in ("lag1", "slope", "example", "power"):  # the same model measured twice gives the same numbers
        assert trained[key] == init[key]


@pytest.mark.slow  # ~15-20 s on 2 shared cores (Hydra, joblib workers, the report's plots)
def test_shattered_gradients_smoke_sweep(tmp_path):
    """One depth, seed 0, He init, plain and ODE (2 jobs): runs, records both phases, reports the section and
    the three plots."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "odenet.run", "+experiment=shattered_gradients", "+debug=smoke", "seed=0",
         "solver.steps=2", "field.init=he", "+shattering_block=plain,ode", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={sweep}", "hydra.callbacks.report.plots=always"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2
    for run in runs:
        analysis = json.loads((run / "metrics.json").read_text())["analysis"]
        for key in ("shattering_init", "shattering"):
            assert "error" not in analysis[key] and len(analysis[key]["example"]) == 256
    text = (sweep / "report.md").read_text()
    assert "## Shattered gradients" in text and "### Lag-1 autocorrelation, He init" in text
    assert "| depth N | plain: at init | plain: trained | ODE: at init | ODE: trained |" in text and "| 2 |" in text
    for name in ("shattering_depth.png", "shattering_traces.png", "shattering_spectra.png"):
        assert 0 < (sweep / name).stat().st_size <= MAX_PNG_BYTES


def test_report_section_and_plots_in_process(tmp_path):
    """Two smoke runs trained in-process (plain at N = 2, a one-step ResNet counted as both h = 1 and h = 1/N):
    the section's tables, its values from metrics.json, and the plots."""
    from odenet.reports import ReportContext
    from odenet.reports.shattered_gradients import (
        shattered_gradients_section,
        shattering_depth_plot,
        shattering_spectra_plot,
        shattering_traces_plot,
    )
    from odenet.runner.train import train_and_evaluate

    lags = {}
    for name, over in (("plain", ["+shattering_block=plain", "solver.steps=2"]),
                       ("res", ["+shattering_block=residual_h1", "solver.steps=1"])):
        cfg = load_config(["+experiment=shattered_gradients", "+debug=smoke", "analysis.shattering_lines=2", *over])
        metrics = train_and_evaluate(cfg, tmp_path / name)
        lags[name] = metrics["analysis"]["shattering_init"]["lag1_mean"]
    ctx = ReportContext.load(tmp_path)
    text = "\n".join(shattered_gradients_section(ctx))
    assert "along 2 segments" in text and "### Lag-1 autocorrelation, default init" in text
    assert "| depth N | plain: at init | plain: trained | ResNet h=1: at init |" in text
    lag_table = text.split("### Lag-1 autocorrelation, default init")[1].split("### Spectral slope")[0]
    rows = {line.split(" | ")[0]: line for line in lag_table.splitlines() if line.startswith(("| 1 |", "| 2 |"))}
    assert f"| 2 | {lags['plain']:.3f} |" in rows["| 2"]
    one = rows["| 1"].split(" | ")  # depth 1: plain has none, both ResNets the same run (once per seed)
    assert one[1:3] == ["–", "–"] and one[3] == one[5] == f"{lags['res']:.3f}"
    for plot in (shattering_depth_plot, shattering_traces_plot, shattering_spectra_plot):
        assert plot(ctx) is not None
