"""Ott et al.'s published protocol end to end (slow: two smoke sweeps): the grid search and the adaptation run, their
reports (the plane figure and folds for the Conv1d field, the adaptation against the grid) and the side-by-side
protocol tables."""

from __future__ import annotations

import json

import pytest

from odenet.reports import main
from odenet.reports.step_adaptation import protocol_comparison as adapted_comparison
from odenet.reports.step_size_ablation import protocol_comparison as grid_comparison


@pytest.mark.slow
def test_ott_protocol_smoke_sweeps_and_reports(tmp_path, smoke_sweep):
    grid_proc, grid = smoke_sweep("step_size_ablation_ott")
    proc, sweep = smoke_sweep("step_adaptation_ott")
    assert grid_proc.returncode == 0, grid_proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(grid.rglob("metrics.json"))]
    assert sorted(r["train"]["steps"] for r in runs) == [2, 4, 8, 32]
    assert all(r["status"] == "ok" and r["train"]["parameters"] == 3207 for r in runs)
    text = (grid / "report.md").read_text()
    assert "## Critical step size" in text and "## Folds of the step map" in text  # conv1d: a vector field
    assert (grid / "plane_large_vs_small_step.png").is_file()
    (adapted,) = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert adapted["train"]["adaptation"]["accuracy_factor"] == 50

    out = tmp_path / "report"
    assert main([str(sweep), "--grid", str(grid), "--out", str(out)]) == 0
    assert "### Against the grid search (euler trained at fixed N)" in (out / "report.md").read_text()
    grid_lines = grid_comparison({"theirs": grid})
    assert [line.split(" |")[0] for line in grid_lines[2:] if line] == [f"| h = 1/{n} ({n})" for n in (2, 4, 8, 32)]
    (row,) = [line for line in adapted_comparison({"theirs": sweep})[2:] if line]
    assert row.startswith("| theirs | 1 | ")
