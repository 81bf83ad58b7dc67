"""The nested_growth experiment: its cases compose as described, and a smoke sweep of four of its jobs runs end to
end with its report section (odenet.reports.nested_growth) and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from odenet.reports import MAX_PNG_BYTES, collect, main
from odenet.reports.collect import ReportContext
from odenet.reports.nested_growth import growth_groups, nested_growth_section
from odenet.runner.config import load_config
from odenet.runner.train import train_and_evaluate
from odenet.runner.validate import validate

CASES = ["residual_identity", "residual_default", "residual_control", "plain_identity", "plain_default",
         "plain_control", "tied_refine", "tied_control"]


@pytest.mark.parametrize("case", CASES)
def test_every_case_composes_on_the_digits_setup(case):
    cfg = load_config(["+experiment=nested_growth", f"+nested_case={case}", "solver.steps=4"])
    validate(cfg)
    c = OmegaConf.to_container(cfg, resolve=True)
    setup = OmegaConf.to_container(load_config(["+experiment=degradation"]), resolve=True)
    for key in ("data", "optimizer", "trainer", "model"):
        assert c[key] == setup[key], f"{key} differs from the digits_mlp setup"
    assert c["growth"]["mode"] == case.split("_")[1] and c["growth"]["at"] == 0.5
    if case.startswith("tied"):
        assert not c["field"]["untied"] and c["block"]["T"] == 1.0 and c["growth"]["factor"] == 2
    else:  # untied at h = 1, doubling the depth
        assert c["field"]["untied"] and c["block"]["T"] == 4 and c["growth"]["insert"] == 4
        assert c["block"]["kind"] == ("plain" if case.startswith("plain") else "residual")


@pytest.mark.slow  # ~15 s; the report's default-suite test below uses in-process runs
def test_nested_growth_smoke_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "odenet.run", "+experiment=nested_growth", "+debug=smoke", "trainer.progress=false",
         "seed=0", "solver.steps=2", "+nested_case=residual_identity,plain_identity,tied_refine,tied_control",
         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", "hydra.callbacks.report.plots=never"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert len(runs) == 4 and all(m["status"] == "ok" for m in runs)
    growth = {m["overrides"]["nested_case"]: m["train"]["growth"] for m in runs}
    assert growth["residual_identity"]["loss_after"] == growth["residual_identity"]["loss_before"]
    assert growth["plain_identity"]["loss_after"] != growth["plain_identity"]["loss_before"]
    assert growth["tied_refine"]["steps_after"] == 4 and "refinement" in growth["tied_refine"]

    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--plots"]) == 0
    text = (out / "report.md").read_text()
    assert "## Nested growth" in text and "### Grid refinement N → 2N" in text
    assert "| untied residual (h = 1), identity" in text and "| 2 → 4 |" in text
    assert "| tied residual (ODE view), refine" in text
    assert 0 < (out / "nested_growth.png").stat().st_size <= MAX_PNG_BYTES


def test_the_report_from_in_process_runs(tmp_path):
    """Two seeds of an identity-grown untied ResNet and its control, plus one refined tied field: the section's
    numbers are the runs' own."""
    base = ["+experiment=nested_growth", "+debug=smoke", "solver.steps=2", "trainer.iterations=4"]
    records = {}
    for case in ("residual_identity", "residual_control", "tied_refine"):
        for seed in (0, 1):
            m = train_and_evaluate(load_config([*base, f"+nested_case={case}", f"seed={seed}"]),
                                   tmp_path / f"{case}_{seed}")
            records[case, seed] = m
    ctx = ReportContext.load(tmp_path)
    groups = growth_groups(ctx)
    assert set(groups) == {("untied residual (h = 1)", "identity"), ("untied residual (h = 1)", "control"),
                           ("tied residual (ODE view)", "refine")}
    lines = "\n".join(nested_growth_section(ctx))
    row = next(ln for ln in lines.splitlines() if ln.startswith("| untied residual (h = 1), identity"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2 → 4" and cells[5] == "0" and cells[9] == "2/2"  # no jump; final below the start
    finals = [records["residual_identity", s]["train"]["train_loss"] for s in (0, 1)]
    controls = [records["residual_control", s]["train"]["train_loss"] for s in (0, 1)]
    diffs = [f - c for f, c in zip(finals, controls)]
    assert cells[8].startswith(f"{sum(diffs) / 2:.3g}")
    assert "### Grid refinement N → 2N" in lines
    refine = next(ln for ln in lines.splitlines() if ln.startswith("| 2 → 4 | 1/2"))
    change = [records["tied_refine", s]["train"]["growth"]["refinement"]["change"] for s in (0, 1)]
    assert f"{sum(change) / 2:.3g}" in refine
    assert len(collect(tmp_path)) == 6
