"""The step_size_ablation experiment (odenet.reports.step_size_ablation, odenet.reports.plane): critical step size,
folds of the step map, plane figure, the registry's handling of a failing section, smoke sweep."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from odenet import ResidualStack
from odenet.analysis.folds import fold_fraction, step_jacobian_determinants
from odenet.fields import Augment
from odenet.models import Classifier
from odenet.reports import MAX_PNG_BYTES, ReportContext, registry, save_figure, write_report
from odenet.reports import step_size_ablation as step_size
from odenet.reports.plane import PLANE_PLOT, PlaneModel, plane_figure
from odenet.reports.step_size_ablation import critical_step_sizes, is_finer, step_factor_table
from odenet.runner.config import load_config

RUNNER_COLUMNS = ("train_solver", "train_steps", "test_solver", "test_steps", "accuracy", "nfe", "seed", "status")


# --- synthetic summary rows ---------------------------------------------------------------------


def _row(n: int, seed: int, solver: str, steps: int | None, acc: float | None, status: str = "ok") -> dict[str, Any]:
    """A summary row of a model trained with euler at ``n`` steps (``steps`` None: dopri5)."""
    return {
        "train_solver": "euler",
        "train_steps": n,
        "train_step_size": 1 / n,
        "test_solver": solver,
        "test_steps": steps,
        "test_step_size": None if steps is None else 1 / steps,
        "rtol": 1e-6 if steps is None else None,
        "atol": 1e-8 if steps is None else None,
        "is_train_solver": solver == "euler" and steps == n,
        "accuracy": acc,
        "loss": None,
        "nfe": None,
        "seed": seed,
        "status": status,
        "reason": None if status == "ok" else "boom",
        "run_dir": f"{n}-{seed}",
    }


# Mean gap of the finer solvers per N (points): 16 -> 0.5, 8 -> 0.9, 4 -> 3, 2 -> 0 (passes, above a failure).
FINER_DROP = {16: 0.005, 8: 0.009, 4: 0.03, 2: 0.0}


def _synthetic_rows() -> list[dict[str, Any]]:
    rows = []
    for n, drop in FINER_DROP.items():
        for seed, noise in ((0, 0.002), (1, -0.002)):
            train = 0.99 + noise
            rows += [
                _row(n, seed, "euler", n, train),
                _row(n, seed, "euler", 2 * n, train - drop),  # finer: half the step
                _row(n, seed, "midpoint", n, train - drop / 2),  # finer: higher order, same step
                _row(n, seed, "rk4", 2 * n, train - 0.8 * drop),
                _row(n, seed, "dopri5", None, train - 0.9 * drop),
                # coarser than training: must be ignored however bad
                _row(n, seed, "euler", max(1, n // 2), 0.3),
                _row(n, seed, "rk4", max(1, n // 2), 0.3),
            ]
    rows.append(_row(4, 0, "rk4", 16, None, status="failed"))  # failed evaluations are counted, not used
    return rows


def test_is_finer_classifies_test_solvers():
    def finer(solver: str, steps: int | None, n: int = 8) -> bool:
        return is_finer(_row(n, 0, solver, steps, 0.5))

    assert not finer("euler", 8)  # the training solver itself
    assert finer("euler", 16) and finer("euler", 11)  # a smaller step
    assert not finer("euler", 5) and not finer("euler", 4)  # a larger step
    assert finer("midpoint", 8) and finer("rk4", 8) and finer("rk4", 16)  # higher order, step <= h
    assert not finer("midpoint", 4) and not finer("rk4", 5)  # higher order but a larger step
    assert finer("dopri5", None)
    dopri_trained = {**_row(8, 0, "rk4", 8, 0.5), "train_solver": "dopri5", "train_steps": None}
    dopri_trained["train_step_size"] = None
    assert not is_finer(dopri_trained)  # no training step to compare with


def test_critical_step_size_on_synthetic_rows():
    (result,) = critical_step_sizes(_synthetic_rows())
    assert result.train_solver == "euler" and result.tolerance == 0.01
    assert [c.train_steps for c in result.checks] == [16, 8, 4, 2]  # smallest step size first
    assert [c.within for c in result.checks] == [True, True, False, True]
    assert result.critical == pytest.approx(1 / 8)  # 1/4 fails, so 1/2 does not count
    assert result.largest_within == pytest.approx(1 / 2)  # the literal reading
    by_n = {c.train_steps: c for c in result.checks}
    assert by_n[4].gap == pytest.approx(-0.03) and by_n[8].gap == pytest.approx(-0.009)
    assert by_n[4].worst_solver == "euler N=8 (h=1/8)"  # the farthest finer solver, not a coarser one
    assert by_n[4].train_accuracy == pytest.approx(0.99)
    assert (by_n[4].seeds, by_n[4].seeds_within, by_n[4].failed) == (2, 0, 1)
    assert (by_n[8].seeds, by_n[8].seeds_within) == (2, 2)

    assert critical_step_sizes(_synthetic_rows(), tolerance=0.001)[0].critical is None  # 0.5 points > 0.1
    assert critical_step_sizes(_synthetic_rows(), tolerance=0.05)[0].critical == pytest.approx(1 / 2)
    one_step = [r for r in _synthetic_rows() if r["train_steps"] == 8]
    assert critical_step_sizes(one_step) == []  # a single training step size has no critical one

    lines = step_size.critical_step_markdown([result])
    text = "\n".join(lines)
    assert "**Critical step size (trained with euler): h = 1/8 (N = 8).**" in text
    assert "The largest passing h is 1/2, but a smaller h fails." in text
    assert "| 1/4 | 4 | 0.9900 |" in text and "| -3.0 | 0/2 | **no** (1 failed) |" in text


def test_step_factor_table_matches_round_n_over_factor():
    lines = step_factor_table(_synthetic_rows())
    text = "\n".join(lines)
    assert "### Tested with euler" in text and "### Tested with rk4" in text
    # N=8, euler: factor 0.5 -> 16 steps, factor 1 -> 8 (training), factor 2 -> 4 (the coarse one)
    row = next(line for line in lines if line.startswith("| euler N=8 (h=1/8)") and "(16)" in line)
    assert row.split(" | ")[1:4] == ["0.981 ± 0.003 (16)", "–", "0.990 ± 0.003 (8)"]
    assert row.rstrip(" |").endswith("0.300 ± 0.000 (4)")


def test_step_factor_table_is_empty_when_every_model_is_tested_at_its_own_step_only():
    """A depth sweep (each model at its training step, no other factor) has nothing to compare across factors."""
    own_step = [r for r in _synthetic_rows() if r["test_steps"] == r["train_steps"]]
    assert len({r["train_steps"] for r in own_step}) >= 2
    assert step_factor_table(own_step) == []


# --- folds of the step map ---------------------------------------------------------------------


class LinearField(nn.Module):
    """``F(t, x) = a x``: the Euler step map is ``(1 + a h) x``, with determinant ``(1 + a h)^d``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.a * x


def _classifier(field: nn.Module, steps: int, scheme: str = "euler", augment: int = 1) -> Classifier:
    stem = nn.Sequential(nn.Flatten(), Augment(augment)) if augment else nn.Flatten()
    return Classifier(stem, ResidualStack(field, steps=steps, scheme=scheme), nn.Linear(2 + augment, 2))


def test_step_jacobian_determinants_are_exact_for_a_linear_field():
    x = torch.randn(5, 3)
    big = ResidualStack(LinearField(-4.0), steps=2)  # h = 1/2: x -> -x, det = (-1)^3
    assert torch.allclose(step_jacobian_determinants(big, x), torch.full((2, 5), -1.0))
    small = ResidualStack(LinearField(-4.0), steps=64)
    assert torch.allclose(step_jacobian_determinants(small, x), torch.full((64, 5), (1 - 4 / 64) ** 3))
    rk4 = ResidualStack(LinearField(-4.0), steps=2, scheme="rk4")  # R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24, z = -2
    assert torch.allclose(step_jacobian_determinants(rk4, x), torch.full((2, 5), (1 / 3) ** 3))
    assert fold_fraction(_classifier(LinearField(-4.0), 2), torch.randn(7, 2)) == 1.0
    assert fold_fraction(_classifier(LinearField(-4.0), 64), torch.randn(7, 2)) == 0.0
    with pytest.raises(ValueError, match="ResidualStack"):
        step_jacobian_determinants(nn.Identity(), x)  # type: ignore[arg-type]


def test_plane_figure_on_a_tiny_model(tmp_path: Path):
    torch.manual_seed(0)
    x = torch.rand(40, 2) - 0.5
    y = (x.norm(dim=1) > 0.3).long()
    folding = _classifier(LinearField(-4.0), 2)  # every step folds
    mlp = _classifier(odenet_mlp(), 8)
    fig = plane_figure([PlaneModel("folding h=1/2", folding), PlaneModel("mlp h=1/8", mlp)], x, y, resolution=16,
                       trajectories=3, folded=2, fine_steps=8)  # fmt: skip
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 8  # 2 models x (regions, fine regions, trajectories, folds)
    titles = [ax.get_title() for ax in panels]
    assert "tested with euler, 2 steps" in titles[0] and "tested with rk4, 8 steps" in titles[1]
    assert "100.0% of test points meet a fold" in titles[2] and "min det -1; 100.0% of the plane folded" in titles[3]
    # 3 trajectories per class + 2 more that fold; each a line and a start marker; all dashed (every step folds)
    lines = panels[2].get_lines()
    assert len(lines) == 2 * (2 * 3 + 2)
    assert sum(line.get_linestyle() == "--" for line in lines) == 8
    path = save_figure(fig, tmp_path / "plane.png")
    assert 0 < path.stat().st_size <= MAX_PNG_BYTES
    with pytest.raises(ValueError, match="2-D inputs"):
        plane_figure([PlaneModel("m", mlp)], torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def odenet_mlp() -> nn.Module:
    from odenet.fields import MLPField

    return MLPField(3, hidden=8, depth=2, activation="relu", time="concat")


# --- the report registry -------------------------------------------------------------


def test_a_failing_extension_is_logged_and_skipped(tmp_path: Path, monkeypatch, caplog):
    run = tmp_path / "run"
    run.mkdir()
    metrics = {"status": "ok", "seed": 0, "overrides": {}, "train": {"solver": "euler", "steps": 2, "step_size": 0.5},
               "evaluations": [{"test_solver": "euler", "test_steps": 2, "test_step_size": 0.5, "accuracy": 0.9,
                                "status": "ok", "is_train_solver": True}]}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))

    def broken(ctx: ReportContext) -> list[str]:
        raise RuntimeError("extension bug")

    def fine(ctx: ReportContext) -> list[str]:
        assert [r["run_dir"] for r in ctx.rows] == ["."] and ctx.run(".").metrics == metrics
        return ["## Extra", "", "hello"]

    monkeypatch.setattr(registry, "SECTIONS", {"broken": broken, "fine": fine})
    monkeypatch.setattr(registry, "PLOTS", {"broken.png": broken})
    with caplog.at_level(logging.ERROR, logger="odenet.reports"):
        paths = write_report(run)
    assert [p.name for p in paths] == ["summary.csv", "report.md"]
    md = (run / "report.md").read_text()
    assert "## Extra\n\nhello\n" in md and md.index("## Extra") < md.index("## All evaluations")
    skipped = [r for r in caplog.records if "failed; skipped" in r.getMessage()]
    assert len(skipped) == 2 and all("extension bug" in (r.exc_text or "") for r in skipped)


# --- the experiment ------------------------------------------------------------------------------


def test_experiment_config():
    cfg = load_config(["+experiment=step_size_ablation", "+train_solver=euler_16"])
    assert (cfg.data.name, cfg.field.hidden, cfg.block.T, cfg.model.augment_dim) == ("sphere2", 32, 1.0, 1)
    assert (cfg.solver.name, cfg.solver.steps) == ("euler", 16)
    factors = sorted({(e.name, e.step_factor) for e in cfg.evaluation.solvers if e.step_factor is not None})
    assert factors == [(s, f) for s in ("euler", "midpoint", "rk4") for f in step_size.STEP_FACTORS]
    assert any(e.name == "dopri5" and e.rtol == 1e-6 for e in cfg.evaluation.solvers)
    dopri = load_config(["+experiment=step_size_ablation", "+train_solver=dopri5"])
    assert dopri.solver.name == "dopri5" and all(e.step_factor is None for e in dopri.evaluation.solvers)
    assert sorted({e.steps for e in dopri.evaluation.solvers if e.steps}) == [2, 4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def ablation_sweep(smoke_sweep) -> Path:
    proc, sweep = smoke_sweep("step_size_ablation")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_smoke_sweep_writes_summary_with_the_runner_columns(ablation_sweep: Path):
    with (ablation_sweep / "summary.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = list(reader.fieldnames or []), list(reader)
    assert set(RUNNER_COLUMNS) <= set(columns)
    trained = sorted({(r["train_solver"], r["train_steps"]) for r in rows})
    assert trained == sorted([("dopri5", "")] + [("euler", str(n)) for n in (2, 4, 8, 16, 32, 64)])
    assert all(r["status"] == "ok" for r in rows)  # seed=0 with trainer.ensemble=3: seeds 0, 1, 2 per job
    assert {(r["train_solver"], r["train_steps"], r["seed"]) for r in rows} == {
        (solver, steps, s) for solver, steps in trained for s in "012"}
    euler8 = {(r["test_solver"], r["test_steps"]) for r in rows if r["train_steps"] == "8"}
    assert {("euler", s) for s in ("16", "11", "8", "5", "4")} <= euler8 and ("dopri5", "") in euler8
    dopri = {(r["test_solver"], r["test_steps"]) for r in rows if r["train_solver"] == "dopri5"}
    assert ("rk4", "64") in dopri and ("midpoint", "2") in dopri


def test_smoke_sweep_report_has_the_step_size_sections_and_plot(ablation_sweep: Path):
    md = (ablation_sweep / "report.md").read_text()
    for heading in ("## Critical step size", "## Step factors", "## Folds of the step map"):
        assert heading in md
    assert "**Critical step size (trained with euler)" in md
    plane = ablation_sweep / PLANE_PLOT
    assert plane.is_file() and 0 < plane.stat().st_size <= MAX_PNG_BYTES
    assert f"({PLANE_PLOT})" in md
    # in the order of the recorded reports: the step-size sections, then the folds (odenet.reports.plane)
    positions = [md.index(h) for h in ("## Critical step size", "## Step factors", "## Folds of the step map")]
    assert positions == sorted(positions)
    assert "## Convergence test" not in md and "## Step-size adaptation" not in md  # their data do not fit


def test_step_factor_table_keeps_trained_models_apart():
    """Plain nets at h = 1/8 and residual nets at h = 1, both N = 8: two rows, not one pooled mean (0.530)."""

    def arm(block: str, h: float, acc: float) -> list[dict[str, Any]]:
        return [{**_row(8, seed, "euler", steps, acc), "train_step_size": h, "model.block": block,
                 "run_dir": f"{block}-{h}-{seed}"} for seed in (0, 1) for steps in (8, 16)]  # fmt: skip

    lines = step_factor_table([*arm("plain", 1 / 8, 0.10), *arm("residual", 1.0, 0.96)])
    rows = [line for line in lines if line.startswith("| euler N=8")]
    assert len(rows) == 2 and not any("0.530" in line for line in lines)
    by_h = {line.split(" | ")[0]: line.split(" | ")[1:4] for line in rows}
    assert by_h["| euler N=8 (h=1/8)"] == ["0.100 ± 0.000 (16)", "–", "0.100 ± 0.000 (8)"]
    assert by_h["| euler N=8 (h=1)"] == ["0.960 ± 0.000 (16)", "–", "0.960 ± 0.000 (8)"]
    # a further swept setting at the same N and h is named in the label
    lines = step_factor_table([*arm("plain", 1.0, 0.10), *arm("residual", 1.0, 0.96)])
    labels = sorted(line.split(" | ")[0] for line in lines if line.startswith("| euler N=8"))
    assert labels == ["| euler N=8 (h=1), model.block=plain", "| euler N=8 (h=1), model.block=residual"]
