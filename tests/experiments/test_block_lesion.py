"""The block_lesion experiment: its configs (arms, h, MNIST-1D arm), the ``analysis.lesion`` measurement on a
trained model, the report's helpers (known answers), in-process smoke runs of the three arms with their report
section and plot, and (slow) the smoke sweep end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from odenet.analysis import relative_updates, single_lesions
from odenet.reports import MAX_PNG_BYTES, main
from odenet.reports.block_lesion import chance_fraction, random_at, single_drops
from odenet.runner import measure
from odenet.runner.config import AnalysisConfig, load_config
from odenet.runner.train import train_and_evaluate

SMOKE = ["+debug=smoke", "trainer.progress=false"]
ARMS = {"plain": ("plain", None), "residual_h1": ("residual", "N"), "residual_h1n": ("residual", 1.0)}


def _cfg(name: str, arm: str, steps: int, *extra: str):
    return load_config([f"+experiment={name}", f"+lesion_arm={arm}", f"solver.steps={steps}", *extra])


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_arms_set_the_block_and_h(arm):
    kind, T = ARMS[arm]
    for name, data in (("block_lesion", "digits"), ("block_lesion_mnist1d", "mnist1d")):
        cfg = OmegaConf.to_container(_cfg(name, arm, 16), resolve=True)
        assert cfg["block"]["kind"] == kind and cfg["data"]["name"] == data
        assert cfg["field"]["untied"] and cfg["analysis"]["lesion"] and cfg["solver"]["name"] == "euler"
        if T is not None:
            assert cfg["block"]["T"] == (16.0 if T == "N" else T)  # h = T / N: 1 or 1/16


def test_mnist1d_arm_differs_only_in_the_data():
    a, b = (OmegaConf.to_container(_cfg(n, "residual_h1", 8), resolve=True) for n in ("block_lesion",
                                                                                     "block_lesion_mnist1d"))
    for key in ("field", "model", "block", "solver", "optimizer", "trainer", "analysis"):
        assert a[key] == b[key], key


def test_report_helpers_known_answers():
    les = {"steps": 8, "intact_accuracy": 0.9, "single": [0.9, 0.8, 0.1, 0.85, 0.9, 0.9, 0.9, 0.5],
           "random_k": [1, 2, 4], "random": [[0.8, 0.9], [0.5, 0.7], [0.2, 0.1]]}
    assert single_drops(les) == pytest.approx([0.0, 0.1, 0.8, 0.05, 0, 0, 0, 0.4])
    assert random_at(les, 1 / 4) == pytest.approx(0.6) and random_at(les, 1 / 2) == pytest.approx(0.15)
    assert random_at({**les, "steps": 16}, 1 / 2) is None  # k = 8 was not drawn
    assert chance_fraction(les, 0.1) == pytest.approx(1 / 8)  # 0.1 is not above 0.1 + 0.005
    assert chance_fraction(les, None) is None


def test_lesion_measurement_on_a_model(tmp_path):
    cfg = _cfg("block_lesion", "residual_h1", 4, *SMOKE, "analysis.lesion_draws=3")
    metrics = train_and_evaluate(cfg, tmp_path / "run")
    les = metrics["analysis"]["lesion"]
    assert "error" not in les, les
    assert les["split"] == "test" and les["points"] == 64 and les["steps"] == 4 and les["step_size"] == 1.0
    assert len(les["single"]) == 4 and les["random_k"] == [1, 2] and [len(r) for r in les["random"]] == [3, 3]
    assert len(les["relative_update"]) == 4 and 0 < les["evenness_entropy"] <= 1
    ev = [e for e in metrics["evaluations"] if e.get("is_train_solver")]
    assert les["intact_accuracy"] == pytest.approx(ev[0]["accuracy"])  # the training solver's test accuracy
    # the same numbers from the library functions on the saved model
    from odenet.runner.rundir import RunDir
    from odenet.runner.train import load_data

    model = RunDir(tmp_path / "run").load_model().eval()
    data = load_data(cfg)
    with torch.no_grad():
        single = single_lesions(model, data.x_test, data.y_test)
        rel = relative_updates(model, data.x_train[:cfg.analysis.points])  # the analysis points
    assert les["single"] == pytest.approx(single.tolist())
    assert les["relative_update"] == pytest.approx(rel.tolist(), rel=1e-5)
    init = metrics["analysis"]["lesion_init"]  # the control: the same measure on the untrained model
    assert "error" not in init and len(init["relative_update"]) == 4 and init["relative_update"] != pytest.approx(
        les["relative_update"])


def test_lesion_measurement_refuses_an_ode_block():
    cfg = load_config([*SMOKE, "block=ode", "solver=dopri5", "analysis.lesion=true"])
    from odenet.runner.build import build_model
    from odenet.runner.train import load_data

    data = load_data(cfg)
    model = build_model(cfg, data.input_shape, data.num_classes)
    out = measure.after_training(model, data.x_train[:8], data.y_train[:8], torch.nn.functional.cross_entropy,
                                 AnalysisConfig(lesion=True), test=(data.x_test, data.y_test))
    assert "discrete stack" in out["lesion"]["error"]


def test_three_arms_report(tmp_path):
    """In-process smoke runs of the three arms at N = 4, then the report's section and plot."""
    for arm in ARMS:
        train_and_evaluate(_cfg("block_lesion", arm, 4, *SMOKE, "analysis.lesion_draws=2"), tmp_path / "runs" / arm)
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--plots"]) == 0
    text = (out / "report.md").read_text()
    assert "## Block lesions (Veit et al. 2016)" in text
    for arm in ("plain", "residual, h = 1", "residual, h = 1/N"):
        assert re.search(re.escape(f"| {arm}") + r"(?: †(?: \d+/\d+)?)? \| 4 \|", text), arm
    png = out / "block_lesion.png"
    assert png.is_file() and 0 < png.stat().st_size <= MAX_PNG_BYTES


@pytest.mark.slow
def test_block_lesion_smoke_sweep(smoke_sweep):
    proc, sweep = smoke_sweep("block_lesion")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in sweep.rglob("metrics.json")]
    assert len(runs) == 15  # 3 arms x 5 depths (seed 0)
    for run in runs:
        les = json.loads((run / "metrics.json").read_text())["analysis"]["lesion"]
        assert "error" not in les and len(les["single"]) == les["steps"]
    assert "## Block lesions" in (sweep / "report.md").read_text()
