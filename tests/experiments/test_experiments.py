"""The step_adaptation and convergence_test experiments: smoke sweeps end to end, and their report sections
(odenet.reports.step_adaptation, odenet.reports.convergence_test) in ``python -m odenet.report``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from odenet.reports import BASE_COLUMNS, MAX_PNG_BYTES, collect, main
from odenet.reports import convergence_test as refinement
from odenet.runner.config import load_config

SMOKE = ["+debug=smoke", "trainer.progress=false"]
ADAPTED_ROW = r"\| 0(?: †)? \| 1/8 -> "  # seed 0's row (marked when the smoke model is at chance)


def read_summary(sweep: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (sweep / "summary.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_step_adaptation_uses_the_grid_search_settings():
    """A fair comparison: everything but the step-size schedule and the evaluations is step_size_ablation's."""
    ours, grid = (OmegaConf.to_container(load_config([f"+experiment={n}"]), resolve=True)
                  for n in ("step_adaptation", "step_size_ablation"))
    assert grid["trainer"].pop("ensemble") == 3 and ours["trainer"].pop("ensemble") == 1  # the grid batches its
    # seeds (each member trained as its separate run); adaptation changes each run's step, so it runs them apart
    for key in ("data", "field", "model", "block", "optimizer", "trainer", "device"):
        assert ours[key] == grid[key], f"{key} differs from step_size_ablation: keep them in step"
    assert ours["solver"]["name"] == grid["solver"]["name"] == "euler"
    assert ours["adaptation"]["enabled"] and not grid["adaptation"]["enabled"]
    assert ours["adaptation"]["every"] == 50 and ours["adaptation"]["threshold"] == 0.1


def test_step_adaptation_smoke_sweep(tmp_path, smoke_sweep):
    proc, sweep = smoke_sweep("step_adaptation")
    grid_proc, grid = smoke_sweep("step_size_ablation")  # the grid search it is compared with
    assert grid_proc.returncode == 0, grid_proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    columns, rows = read_summary(sweep)
    assert columns[-len(BASE_COLUMNS):] == list(BASE_COLUMNS)
    assert {r["test_solver"] for r in rows} == {"euler", "midpoint", "rk4", "dopri5"}
    assert all(r["status"] == "ok" and r["seed"] == "0" for r in rows)
    (run,) = [p.parent for p in sweep.rglob("metrics.json")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["adaptation"]["checks"] == 3  # every 2 of 6 smoke iterations
    assert (run / "adaptation.csv").is_file()
    train_row = next(r for r in rows if r["is_train_solver"] == "True")
    assert float(train_row["train_step_size"]) == pytest.approx(metrics["train"]["adaptation"]["final_step_size"])

    text = (sweep / "report.md").read_text()  # the multirun's report: the adapted runs alone
    assert "## Step-size adaptation" in text and re.search(ADAPTED_ROW, text) and "mean train NFE" in text
    assert "### Against the grid search" not in text and (sweep / "step_adaptation.png").is_file()

    out = tmp_path / "report"
    assert main([str(sweep), "--grid", str(grid), "--out", str(out), "--plots"]) == 0
    text = (out / "report.md").read_text()
    assert re.search(ADAPTED_ROW, text) and "mean train NFE" in text
    assert "### Against the grid search (euler trained at fixed N)" in text
    assert re.search(r"\| euler N=8 \(h=1/8\) \| 8 ± 0 \| 8 ± 0 \| .* \| 3 \|", text)  # the grid's 3 seeds
    assert "| **euler, adapted h** |" in text and "### Per seed" in text
    assert f"--grid {grid.resolve()}`" in text  # the regenerate command keeps the option
    assert 0 < (out / "step_adaptation.png").stat().st_size <= MAX_PNG_BYTES


def test_convergence_test_smoke_sweep(tmp_path, smoke_sweep):
    proc, sweep = smoke_sweep("convergence_test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    columns, rows = read_summary(sweep)
    assert columns[-len(BASE_COLUMNS):] == list(BASE_COLUMNS) and "solver.name" in columns
    assert all(r["status"] == "ok" for r in rows)
    for scheme in ("euler", "rk4"):
        mine = [r for r in rows if r["train_solver"] == scheme]
        assert len(mine) == 15  # 7 euler + 7 rk4 step counts (the training one among them) + dopri5
        for solver in ("euler", "rk4"):
            steps = sorted(int(r["test_steps"]) for r in mine if r["test_solver"] == solver)
            assert steps == [1, 2, 4, 8, 16, 32, 64]
        assert [r["test_solver"] for r in mine if not r["test_steps"]] == ["dopri5"]
    assert (sweep / "accuracy_vs_test_steps.png").is_file()
    assert refinement.refinement_ladders(collect(sweep)) == {s: [1, 2, 4, 8, 16, 32, 64] for s in ("euler", "rk4")}

    table = (sweep / "report.md").read_text()  # the multirun's report holds the convergence test
    assert "## Convergence test: accuracy as the test solver is refined" in table
    assert "### Trained with euler N=2 (h=1/2) (1 seeds)" in table and "dopri5 (adaptive reference)" in table
    assert "| euler | change | " in table
    assert 0 < (sweep / "refinement.png").stat().st_size <= MAX_PNG_BYTES


def test_refinement_ladder_needs_one_ladder_for_every_run():
    def row(run, solver, steps, train=False):
        return {"train_solver": "euler", "train_steps": 8, "train_step_size": 1 / 8, "test_solver": solver,
                "test_steps": steps, "test_step_size": None if steps is None else 1 / steps, "rtol": None,
                "atol": None, "is_train_solver": train, "accuracy": 0.5, "loss": 0.0, "nfe": 1.0, "seed": 0,
                "status": "ok", "reason": None, "run_dir": run}

    ladder = [row(r, "euler", n, n == 8) for r in ("0", "1") for n in (2, 4, 8, 16)] + [row("0", "dopri5", None)]
    assert refinement.refinement_ladders(ladder) == {"euler": [2, 4, 8, 16]}
    step_factors = [row("0", "euler", n, n == 8) for n in (4, 5, 8, 11, 16)]  # round(N / factor): no ladder
    assert refinement.refinement_ladders(step_factors) == {}
    assert refinement.refinement_ladders(ladder[:4] + [row("1", "euler", n, n == 8) for n in (8, 16, 32)]) == {}
    assert refinement.refinement_ladders([row("0", "euler", 8, True), row("0", "euler", 16)]) == {}  # too short


def test_refinement_changes_are_paired_by_seed():
    def row(seed, solver, steps, acc, train=False):
        return {"train_solver": "euler", "train_steps": 2, "train_step_size": 0.5, "test_solver": solver,
                "test_steps": steps, "test_step_size": None if steps is None else 1 / steps, "rtol": None,
                "atol": None, "is_train_solver": train, "accuracy": acc, "loss": 0.0, "nfe": 1.0, "seed": seed,
                "status": "ok", "reason": None, "run_dir": str(seed)}

    rows = [row(0, "euler", 2, 0.9, True), row(0, "euler", 4, 0.8), row(0, "dopri5", None, 0.7),
            row(1, "euler", 2, 0.6, True), row(1, "euler", 4, 0.6), row(1, "dopri5", None, 0.5)]
    (cells,) = refinement.paired_changes(rows).values()
    assert cells[("euler", 4)] == [(0.8, pytest.approx(-0.1)), (0.6, 0.0)]
    assert cells[("dopri5", None)] == [(0.7, pytest.approx(-0.2)), (0.5, pytest.approx(-0.1))]


def test_an_adaptively_trained_model_counts_each_seed_once():
    """A dopri5-trained model evaluated at its training tolerance and at the tight one: the reference cell holds
    the tight evaluation, one entry per seed (not two), so the table's seed count is the number of runs."""
    def row(seed, rtol, acc):
        return {"train_solver": "dopri5", "train_steps": None, "train_step_size": None, "test_solver": "dopri5",
                "test_steps": None, "test_step_size": None, "rtol": rtol, "atol": rtol,
                "is_train_solver": rtol == 1e-3, "accuracy": acc, "loss": 0.0, "nfe": 20.0, "seed": seed,
                "status": "ok", "reason": None, "run_dir": str(seed)}

    rows = [row(0, 1e-3, 0.9), row(0, 1e-5, 0.8), row(1, 1e-3, 0.7), row(1, 1e-5, 0.7)]
    (cells,) = refinement.paired_changes(rows).values()
    assert cells[("dopri5", None)] == [(0.8, pytest.approx(-0.1)), (0.7, 0.0)]
    assert "(2 seeds)" in refinement.refinement_tables(rows)


def test_threads_must_be_positive():
    from odenet.runner.validate import validate as check_config

    check_config(load_config([*SMOKE, "threads=1"]))
    with pytest.raises(ValueError, match="threads"):
        check_config(load_config([*SMOKE, "threads=0"]))
