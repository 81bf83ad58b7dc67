"""Models at chance, smoke runs and failed jobs in a report (odenet.reports.chance): the markers, the withheld
conclusions, the summary's counts and the ``beats_baseline`` column, on fixture sweeps with known answers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from odenet.reports import ReportContext, registry, write_report
from odenet.reports.chance import MARK, cell_at_chance
from odenet.reports.collect import CHANCE_MARGIN, beats_baseline, run_beats_baseline
from odenet.reports.degradation import degradation_section

REPO = Path(__file__).resolve().parents[2]
BASELINE = 0.6
# Accuracy per (training N, test solver, test N); None test N: dopri5. N=2 is at chance (= the baseline).
ACC = {
    2: {("euler", 2): 0.60, ("euler", 4): 0.60, ("euler", 8): 0.60, ("dopri5", None): 0.60},
    4: {("euler", 2): 0.70, ("euler", 4): 0.90, ("euler", 8): 0.895, ("dopri5", None): 0.885},
    8: {("euler", 2): 0.50, ("euler", 4): 0.80, ("euler", 8): 0.95, ("dopri5", None): 0.95},
}
WITHHELD = "withheld: {} of {} models did not beat the majority-class baseline."


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "PLOTS", {})  # tables and text only: rendering is tested elsewhere


def _evaluation(n: int, solver: str, steps: int | None) -> dict[str, Any]:
    return {"test_solver": solver, "test_steps": steps, "test_step_size": None if steps is None else 1 / steps,
            "rtol": 1e-6 if steps is None else None, "atol": 1e-8 if steps is None else None,
            "accuracy": ACC[n][(solver, steps)], "loss": 0.5, "nfe": 10.0, "status": "ok", "reason": None,
            "is_train_solver": solver == "euler" and steps == n}  # fmt: skip


def _metrics(n: int, smoke: bool = False, **extra: Any) -> dict[str, Any]:
    return {"status": "ok", "reason": None, "seed": 0, "overrides": {"solver.steps": str(n)}, "task": "classification",
            "smoke": smoke, "baseline_accuracy": BASELINE,
            "train": {"solver": "euler", "steps": n, "step_size": 1 / n, "block": "residual", "train_loss": 0.1},
            "evaluations": [_evaluation(n, s, k) for s, k in ACC.get(n, {})], **extra}  # fmt: skip


def _job(root: Path, name: str, metrics: dict[str, Any] | None) -> None:
    (root / name / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (root / name / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Job 0 at chance (N=2), job 1 above it (N=4), job 2 a smoke run above it (N=8), job 3 failed, job 4 no
    metrics.json."""
    root = tmp_path / "sweep"
    _job(root, "0", _metrics(2))
    _job(root, "1", _metrics(4))
    _job(root, "2", _metrics(8, smoke=True))
    _job(root, "3", _metrics(16, status="failed", reason="loss diverged (nan) at iteration 3", evaluations=[]))
    _job(root, "4", None)
    return root


def _summary(root: Path) -> list[dict[str, str]]:
    with (root / "summary.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------


def test_the_margin_is_half_a_point_and_unknown_stays_unknown():
    assert CHANCE_MARGIN == 0.005
    assert beats_baseline(0.505, 0.5) is False  # within the margin: at chance
    assert beats_baseline(0.5051, 0.5) is True
    assert beats_baseline(0.3, 0.67) is False  # below the majority rate (a minority class predicted)
    assert beats_baseline(None, 0.5) is None and beats_baseline(0.9, None) is None  # regression: no baseline
    assert run_beats_baseline(_metrics(2)) is False and run_beats_baseline(_metrics(4)) is True
    assert run_beats_baseline(_metrics(4, status="failed")) is None
    assert run_beats_baseline({k: v for k, v in _metrics(4).items() if k != "baseline_accuracy"}) is None  # older run
    assert cell_at_chance([{"status": "ok", "accuracy": 0.6, "baseline_accuracy": 0.6}])
    assert not cell_at_chance([{"status": "ok", "accuracy": 0.6, "baseline_accuracy": None}])


def test_summary_csv_appends_the_baseline_columns(sweep: Path):
    write_report(sweep)
    rows = _summary(sweep)
    assert list(rows[0])[-4:] == ["run_dir", "baseline_accuracy", "beats_baseline", "smoke"]
    by_run = {r["run_dir"]: (r["baseline_accuracy"], r["beats_baseline"], r["smoke"]) for r in rows}
    assert by_run == {"0": ("0.6", "False", "False"), "1": ("0.6", "True", "False"), "2": ("0.6", "True", "True"),
                      "3": ("0.6", "", "False")}  # a failed run: unknown


def test_report_marks_models_at_chance_and_withholds_their_conclusions(sweep: Path):
    md = write_report(sweep)[1].read_text()
    banner = "**Smoke runs (1 of 4): the numbers check the machinery and mean nothing.**"
    assert md.split("\n")[:3] == ["# odenet report", "", banner]
    summary = md[md.index("## Summary") : md.index("Source:")]
    assert "- 4 runs: 3 ok, 1 failed, 1 at chance †, 1 smoke; 1 job folder(s) without metrics.json" in summary
    assert "- Best model (accuracy under its training solver): euler N=8 (h=1/8), 0.9500 (1 seed; majority-class " \
           "baseline 0.6000; smoke)." in summary
    critical = "**Critical step size (trained with euler)** — " + WITHHELD.format(1, 3)
    assert f"- {critical}" in summary and f"\n{critical}\n" in md
    assert "h = " not in md[md.index("## Critical step size") : md.index("## Step factors")]  # no conclusion drawn
    assert f"- **Convergence test (euler N=2 (h=1/2))** — {WITHHELD.format(1, 1)}" in summary
    assert "- **Convergence test (euler N=4 (h=1/4)): not invariant under refinement** — dopri5 (adaptive) changes " \
           "the accuracy by -1.5 points." in summary
    assert "- **Convergence test (euler N=8 (h=1/8)): invariant under refinement** — every finer test solver within " \
           "1 point (largest change +0.0 points, dopri5 (adaptive))." in summary
    assert len(summary.strip().splitlines()) == 8  # heading, blank, counts, best model, four headlines
    # the tables: the model at chance and its cells marked, with the legend; the others not
    assert f"{MARK} at chance: accuracy not above the majority-class baseline" in md
    assert "| euler N=2 (h=1/2) † | 0.6000 † | 0.6000 † |" in md
    assert "| euler N=4 (h=1/4) | 0.9000 | 0.8850 |" in md
    assert "| 1/2 | 2 | 0.6000 † | euler N=8 (h=1/8) | 0.6000 † | +0.0 | 1/1 | withheld |" in md
    assert "| 1/4 | 4 | 0.9000 | dopri5 rtol=1e-06 | 0.8850 | -1.5 | 0/1 | **no** |" in md
    assert "### Trained with euler N=2 (h=1/2) †\n" in md and "### Trained with euler N=4 (h=1/4)\n" in md
    assert "| euler (train) | 2 | 1/2 |  |  | 0.6000 † | 1/1 | 10.0 |" in md
    assert "### Trained with euler N=2 (h=1/2) (1 seeds) †" in md  # the convergence test's table
    # the failures: the failed run and the job folder without metrics.json
    assert "- run `3` (seed 0, trained with euler N=16 (h=1/16)): loss diverged (nan) at iteration 3" in md
    assert "- `4`: no metrics.json (the job failed before writing it, was killed, or is still running)" in md


def test_regression_runs_are_never_marked(tmp_path: Path):
    run = {"status": "ok", "seed": 0, "task": "regression", "smoke": False, "baseline_accuracy": None,
           "train": {"solver": "euler", "steps": 4, "step_size": 0.25},
           "evaluations": [{"test_solver": "euler", "test_steps": 4, "test_step_size": 0.25, "accuracy": None,
                            "loss": 0.02, "nfe": 4.0, "status": "ok", "is_train_solver": True}]}  # fmt: skip
    _job(tmp_path, "0", run)
    md = write_report(tmp_path)[1].read_text()
    assert [r["beats_baseline"] for r in _summary(tmp_path)] == [""]
    assert MARK not in md and "withheld" not in md and "Smoke runs" not in md
    assert "- 1 run: 1 ok, 0 failed, 0 at chance, 0 smoke." in md
    assert "- Best model (lowest test loss under its training solver): euler N=4 (h=1/4), loss 0.0200 (1 seed)." in md


def test_an_all_smoke_sweep_says_so_first(tmp_path: Path):
    _job(tmp_path, "0", _metrics(4, smoke=True))
    md = write_report(tmp_path)[1].read_text()
    assert md.startswith("# odenet report\n\n**Smoke runs: the numbers check the machinery and mean nothing.**\n")


def _stack(block: str, n: int, acc: float) -> dict[str, Any]:
    return {"status": "ok", "seed": 0, "task": "classification", "smoke": False, "baseline_accuracy": 0.5,
            "overrides": {"block": block, "solver.steps": str(n)},
            "train": {"solver": "euler", "steps": n, "step_size": 1 / n, "block": block, "train_loss": 0.3},
            "evaluations": [{"test_solver": "euler", "test_steps": n, "test_step_size": 1 / n, "accuracy": acc,
                             "loss": 0.3, "nfe": float(n), "status": "ok", "is_train_solver": True}]}  # fmt: skip


@pytest.mark.parametrize(("deep_residual", "withheld"), [(0.9, None), (0.5, (1, 3))])
def test_degradation_rests_on_its_controls(tmp_path: Path, deep_residual: float, withheld: tuple[int, int] | None):
    """A deep plain net at chance is degradation itself: marked, the comparison kept. A residual net at chance
    (a control) withholds it."""
    for i, (block, n, acc) in enumerate([("plain", 2, 0.9), ("plain", 8, 0.5), ("residual", 2, 0.9),
                                         ("residual", 8, deep_residual)]):
        _job(tmp_path, str(i), _stack(block, n, acc))
    lines = degradation_section(ReportContext.load(tmp_path))
    assert lines is not None
    text = "\n".join(lines)
    assert "| 8 † 1/2 |" in text or "| 8 † |" in text  # the deep plain net (and the residual one) at chance
    assert ("withheld" in text) == (withheld is not None)
    if withheld is not None:
        assert lines.headlines == ["**Degradation: plain vs residual in depth** — " + WITHHELD.format(*withheld)]


def test_degradation_needs_one_step_size_per_block_and_depth(tmp_path: Path):
    """block_lesion's sweep holds residual nets at h = 1 and h = 1/N at each depth: no single curve per block, so
    no Degradation section (pooling them would mix two regimes)."""
    for i, (block, n, acc) in enumerate([("plain", 2, 0.9), ("plain", 8, 0.8), ("residual", 2, 0.9),
                                         ("residual", 8, 0.9), ("residual", 2, 0.9), ("residual", 8, 0.9)]):
        metrics = _stack(block, n, acc)
        if i >= 4:
            metrics["train"]["step_size"] = 1.0  # T = N
        _job(tmp_path, str(i), metrics)
    assert degradation_section(ReportContext.load(tmp_path)) is None
    for i in (4, 5):
        (tmp_path / str(i) / "metrics.json").unlink()
    assert degradation_section(ReportContext.load(tmp_path)) is not None


def test_a_sweep_whose_job_raised_still_writes_its_report(tmp_path: Path):
    """A job that raised ends Hydra's multirun with an error before on_multirun_end; the callback writes the
    report at exit all the same, marking the job that failed (metrics.json says failed) and the one that left
    none, and the command still fails."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(
        """
        import json, sys, types
        from pathlib import Path
        import hydra
        from hydra.core.hydra_config import HydraConfig
        package = types.ModuleType("odenet")  # odenet without odenet/__init__ (torch), for speed
        package.__path__ = [str(Path(sys.argv.pop(1)) / "odenet")]
        sys.modules["odenet"] = package
        sys.path.insert(0, sys.argv.pop(1))
        from test_chance import _metrics
        from odenet.reports import registry
        registry.PLOTS.clear()

        @hydra.main(version_base=None, config_path=None, config_name=None)
        def task(cfg):
            out = Path(HydraConfig.get().runtime.output_dir)
            if cfg.steps == 4:  # the runner records the failure, then the job raises
                (out / "metrics.json").write_text(json.dumps(_metrics(4, status="failed", reason="boom",
                                                                         evaluations=[])))
                raise RuntimeError("boom")
            if cfg.steps == 8:
                raise RuntimeError("raised before writing metrics.json")
            (out / "metrics.json").write_text(json.dumps(_metrics(int(cfg.steps))))

        if __name__ == "__main__":
            task()
        """
    ))  # fmt: skip
    cmd = [sys.executable, str(app), str(REPO), str(Path(__file__).parent), "-m", "+steps=2,4,8"]
    cmd += ["hydra.sweep.dir=multirun/${now:%H-%M-%S-%f}", "hydra/job_logging=disabled"]
    cmd += ["+hydra.callbacks.report._target_=odenet.reports.ReportCallback"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 1, proc.stderr  # the sweep failed, and says so
    [sweep_dir] = list((tmp_path / "multirun").iterdir())
    rows = _summary(sweep_dir)
    assert [(r["run_dir"], r["status"]) for r in rows] == [("0", "ok")] * 4 + [("1", "failed")]
    md = (sweep_dir / "report.md").read_text()
    assert "- 2 runs: 1 ok, 1 failed, 1 at chance †, 0 smoke; 1 job folder(s) without metrics.json" in md
    assert "- run `1` (seed 0, trained with euler N=4 (h=1/4)): boom" in md
    assert "- `2`: no metrics.json (the job failed before writing it, was killed, or is still running)" in md
