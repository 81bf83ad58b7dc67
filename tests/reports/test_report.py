"""odenet.reports: collecting metrics.json files into summary.csv, report.md and PNG plots; the CLI and callback."""

from __future__ import annotations

import csv
import json
import logging
import runpy
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from odenet.reports import BASE_COLUMNS, ReportCallback, collect, main, registry, write_report

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# every model is tested with euler at N = 2, 4, 8: a refinement ladder, so the convergence test's plot too
PLOT_NAMES = ["accuracy_vs_train_step.png", "accuracy_vs_test_steps.png", "nfe.png", "refinement.png"]
COLUMNS = ["solver.steps", *BASE_COLUMNS]

# Accuracy of seed 0 per (train N, test solver, test N); seed s adds 0.02 s. ``None`` test N: dopri5.
BASE_ACC = {
    2: {("euler", 2): 0.90, ("euler", 4): 0.60, ("euler", 8): 0.55, ("midpoint", 2): 0.70, ("rk4", 2): 0.65,
        ("dopri5", None): 0.62},
    4: {("euler", 2): 0.58, ("euler", 4): 0.94, ("euler", 8): 0.80, ("midpoint", 4): 0.85, ("rk4", 4): 0.84,
        ("dopri5", None): 0.83},
}  # fmt: skip
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
FAILED_EVAL = (2, 1, "rk4")  # (train N, seed, test solver) whose evaluation failed
EVAL_REASON = "step size underflow"
RUN_REASON = "loss diverged (nan) at iteration 12"
SEEDS = (0, 1)
BASELINE = 0.5  # majority-class baseline of the fixture runs: every model beats it


def _evaluation(n_train: int, seed: int, solver: str, steps: int | None) -> dict[str, Any]:
    acc = round(BASE_ACC[n_train][(solver, steps)] + 0.02 * seed, 4)
    adaptive = steps is None
    ev = {
        "test_solver": solver,
        "test_steps": steps,
        "test_step_size": None if adaptive else 1 / steps,
        "rtol": 1e-6 if adaptive else None,
        "atol": 1e-8 if adaptive else None,
        "accuracy": acc,
        "loss": round(1 - acc, 4),
        "nfe": 30.0 - 5 * n_train + 2 * seed if adaptive else float(STAGES[solver] * steps),
        "status": "ok",
        "reason": None,
        "is_train_solver": solver == "euler" and steps == n_train,
    }
    if (n_train, seed, solver) == FAILED_EVAL:
        ev.update(accuracy=None, loss=None, nfe=None, status="failed", reason=EVAL_REASON)
    return ev


def _metrics(n_train: int, seed: int, evaluations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if evaluations is None:
        evaluations = [_evaluation(n_train, seed, s, n) for s, n in BASE_ACC[n_train]]
    return {
        "status": "ok",
        "reason": None,
        "seed": seed,
        "overrides": {"solver.steps": str(n_train), "seed": str(seed)},
        "baseline_accuracy": BASELINE,
        "smoke": False,
        "train": {"solver": "euler", "steps": n_train, "step_size": 1 / n_train, "block": "residual",
                  "iterations": 10, "final_loss": 0.1, "final_accuracy": 0.9, "parameters": 42},
        "evaluations": evaluations,
    }  # fmt: skip


def _write(run_dir: Path, metrics: dict[str, Any] | None) -> Path:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return run_dir


def _make_sweep(root: Path) -> Path:
    """Jobs 0-3 (N=2,4 x seeds 0,1), a failed run nested under retry/0, job 4 without metrics.json."""
    job = 0
    for n in BASE_ACC:
        for seed in SEEDS:
            _write(root / str(job), _metrics(n, seed))
            job += 1
    failed = {
        "status": "failed",
        "reason": RUN_REASON,
        "seed": 0,
        "overrides": {"solver.steps": "8", "seed": "0"},
        "train": {"solver": "euler", "steps": 8, "step_size": 0.125, "block": "residual", "iterations": None,
                  "final_loss": None, "final_accuracy": None, "parameters": None},
        "evaluations": [],
    }  # fmt: skip
    _write(root / "retry" / "0", failed)
    _write(root / "4", None)
    (root / "0" / "checkpoints" / "1000").mkdir(parents=True)  # numbered, but inside a run dir: not a job
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - solver.steps=2,4\n    - seed=0,1\n")
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return _make_sweep(tmp_path / "sweep")


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The fixture sweep with its report written once (plots are the slow part)."""
    root = _make_sweep(tmp_path_factory.mktemp("reported") / "sweep")
    return root, write_report(root)


@pytest.fixture
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the plots in tests about the tables (rendering dominates the runtime)."""
    monkeypatch.setattr(registry, "PLOTS", {})


def _csv_value(v: Any) -> str:
    return "" if v is None else str(v)


def _expected_rows() -> list[dict[str, str]]:
    """summary.csv built straight from the fixture's specification."""
    rows = []
    job = 0
    for n in BASE_ACC:
        for seed in SEEDS:
            for solver, steps in BASE_ACC[n]:
                ev = _evaluation(n, seed, solver, steps)
                row = {"solver.steps": str(n), "train_solver": "euler", "train_steps": n, "train_step_size": 1 / n}
                row |= {k: ev[k] for k in ("test_solver", "test_steps", "test_step_size", "rtol", "atol")}
                row |= {k: ev[k] for k in ("is_train_solver", "accuracy", "loss", "nfe")}
                row |= {"seed": seed, "status": ev["status"], "reason": ev["reason"], "run_dir": str(job)}
                row |= {"baseline_accuracy": BASELINE, "beats_baseline": True, "smoke": False}
                rows.append({k: _csv_value(v) for k, v in row.items()})
            job += 1
    failed = dict.fromkeys(COLUMNS, "")
    failed |= {"solver.steps": "8", "train_solver": "euler", "train_steps": "8", "train_step_size": "0.125"}
    failed |= {"is_train_solver": "False", "seed": "0", "status": "failed", "reason": RUN_REASON}
    failed |= {"run_dir": "retry/0", "smoke": "False"}  # no baseline recorded: beats_baseline unknown
    return rows + [failed]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------------------------


def test_collect_rows_and_skips_run_without_metrics(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="odenet.reports"):
        rows = collect(sweep)
    assert len(rows) == 4 * 6 + 1
    assert list(rows[0]) == COLUMNS  # the "seed" override is not duplicated: the seed column holds it
    assert [r["run_dir"] for r in rows] == [d for d in "0123" for _ in range(6)] + ["retry/0"]
    first = rows[0]
    assert (first["test_solver"], first["test_steps"], first["is_train_solver"]) == ("euler", 2, True)
    assert (first["accuracy"], first["nfe"], first["seed"], first["solver.steps"]) == (0.9, 2.0, 0, "2")
    failed_eval = next(r for r in rows if r["run_dir"] == "1" and r["test_solver"] == "rk4")
    assert (failed_eval["status"], failed_eval["reason"], failed_eval["accuracy"]) == ("failed", EVAL_REASON, None)
    failed_run = rows[-1]
    assert (failed_run["status"], failed_run["reason"], failed_run["test_solver"]) == ("failed", RUN_REASON, None)
    assert (failed_run["train_steps"], failed_run["train_step_size"]) == (8, 0.125)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no metrics.json" in warnings[0] and str(sweep / "4") in warnings[0]


def test_summary_csv_exact(reported: tuple[Path, list[Path]]) -> None:
    sweep, paths = reported
    assert paths[:2] == [sweep / "summary.csv", sweep / "report.md"]
    header, rows = _read_csv(sweep / "summary.csv")
    assert header == COLUMNS
    assert rows == _expected_rows()


def test_report_md_tables_failures_and_paths(reported: tuple[Path, list[Path]]) -> None:
    sweep, _ = reported
    md = (sweep / "report.md").read_text()
    # pivot at the training step size: mean ± sample std over the two seeds
    assert "| trained model | euler | midpoint | rk4 | dopri5 (adaptive, rtol=1e-06) |" in md
    assert "| euler N=2 (h=1/2) | 0.9100 ± 0.0141 | 0.7100 ± 0.0141 | 0.6500 | 0.6300 ± 0.0141 |" in md
    assert "| euler N=4 (h=1/4) | 0.9500 ± 0.0141 | 0.8600 ± 0.0141 | 0.8500 ± 0.0141 | 0.8400 ± 0.0141 |" in md
    # per trained model x evaluation: accuracy, ok/all seeds, mean NFE
    assert "### Trained with euler N=2 (h=1/2)" in md
    assert "| euler (train) | 2 | 1/2 |  |  | 0.9100 ± 0.0141 | 2/2 | 2.0 |" in md
    assert "| euler | 8 | 1/8 |  |  | 0.5600 ± 0.0141 | 2/2 | 8.0 |" in md
    assert "| rk4 | 2 | 1/2 |  |  | 0.6500 | 1/2 | 8.0 |" in md
    assert "| dopri5 |  |  | 1e-06 | 1e-08 | 0.6300 ± 0.0141 | 2/2 | 21.0 |" in md
    assert "| dopri5 |  |  | 1e-06 | 1e-08 | 0.8400 ± 0.0141 | 2/2 | 11.0 |" in md
    # failures, skipped dirs, sweep command and paths
    assert f"run `retry/0` (seed 0, trained with euler N=8 (h=1/8)): {RUN_REASON}" in md
    assert f"evaluation rk4 N=2 (h=1/2) of `1` (seed 1, trained with euler N=2 (h=1/2)): {EVAL_REASON}" in md
    assert "- `4`: no metrics.json" in md
    assert "5 runs (4 ok, 1 failed)" in md
    assert "Sweep overrides: `solver.steps=2,4 seed=0,1`" in md
    assert f"python -m odenet.report {sweep.resolve()}" in md
    for name in PLOT_NAMES:
        assert f"({name})" in md
    # the convergence test: the change of each network's accuracy against its own training solver, by seed
    assert "## Convergence test: accuracy as the test solver is refined" in md
    assert "### Trained with euler N=2 (h=1/2) (2 seeds)" in md
    assert "| euler | change | +0.0 ± 0.0 | -30.0 ± 0.0 | -35.0 ± 0.0 |" in md
    assert md.index("## Convergence test") < md.index("## All evaluations")


def test_plots_are_small_valid_pngs(reported: tuple[Path, list[Path]]) -> None:
    _, paths = reported
    assert [p.name for p in paths[2:]] == PLOT_NAMES
    for path in paths[2:]:
        width, height = _png_size(path)
        assert 400 <= width <= 2500 and 250 <= height <= 2000, (path.name, width, height)
        assert path.stat().st_size < 300_000, path.name


def test_plots_skipped_without_data_and_stale_ones_removed(tmp_path: Path) -> None:
    run = tmp_path / "run"  # a single run dir: metrics.json at the top
    _write(run, _metrics(4, 0, [_evaluation(4, 0, "euler", 4), _evaluation(4, 0, "dopri5", None)]))
    (run / "nfe.png").write_bytes(PNG_SIGNATURE)  # from an earlier report
    paths = write_report(run)
    assert paths == [run / "summary.csv", run / "report.md"]
    assert not (run / "nfe.png").exists()
    assert [r["run_dir"] for r in _read_csv(run / "summary.csv")[1]] == [".", "."]
    assert "None." in (run / "report.md").read_text()  # no failures


def test_single_run_with_several_test_steps_gets_only_the_test_step_plots(tmp_path: Path) -> None:
    _write(tmp_path, _metrics(4, 0))
    assert [p.name for p in write_report(tmp_path)[2:]] == ["accuracy_vs_test_steps.png", "refinement.png"]


@pytest.mark.usefixtures("no_plots")
def test_override_columns_union_and_model_settings(tmp_path: Path) -> None:
    a, b = _metrics(2, 0), _metrics(2, 0)
    a["overrides"] = {"block": "residual", "seed": "0"}
    b["overrides"] = {"block": "plain", "optimizer.lr": "0.1"}
    _write(tmp_path / "0", a)
    _write(tmp_path / "1", b)
    rows = collect(tmp_path)
    assert list(rows[0])[:2] == ["block", "optimizer.lr"]
    assert {(r["block"], r["optimizer.lr"]) for r in rows} == {("residual", None), ("plain", "0.1")}
    md = (write_report(tmp_path)[1]).read_text()
    assert "### Trained with euler N=2 (h=1/2), block=plain, optimizer.lr=0.1" in md
    assert "### Trained with euler N=2 (h=1/2), block=residual, optimizer.lr=" in md


@pytest.mark.usefixtures("no_plots")
def test_failed_run_with_evaluations_is_kept_out_of_the_means(tmp_path: Path) -> None:
    _write(tmp_path / "0", _metrics(4, 0, [_evaluation(4, 0, "euler", 4)]))
    broken = _metrics(4, 1, [_evaluation(4, 1, "euler", 4) | {"accuracy": 0.1}])
    broken |= {"status": "failed", "reason": "final loss is nan"}
    _write(tmp_path / "1", broken)
    rows = collect(tmp_path)
    assert [(r["status"], r["reason"], r["accuracy"]) for r in rows] == [
        ("ok", None, 0.94),
        ("failed", "run failed: final loss is nan", 0.1),
    ]
    md = write_report(tmp_path)[1].read_text()
    assert "| euler (train) | 4 | 1/4 |  |  | 0.9400 | 1/2 | 4.0 |" in md
    assert "2 runs (1 ok, 1 failed)" in md and "final loss is nan" in md


@pytest.mark.usefixtures("no_plots")
def test_unreadable_metrics_is_skipped(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(sweep / "5", None)
    (sweep / "5" / "metrics.json").write_text('{"status": "ok", ')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="odenet.reports"):
        rows = collect(sweep)
    assert len(rows) == 25
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    write_report(sweep)
    assert "- `5/metrics.json`: unreadable metrics.json" in (sweep / "report.md").read_text()


def test_cli_writes_and_prints_paths(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(sweep / n) for n in ["summary.csv", "report.md", *PLOT_NAMES]]


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_exit_code_2(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nope"
    if case == "empty":
        target = _write(tmp_path / "empty", None)  # a run dir that never wrote metrics.json
    assert main([str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert ("no such directory" if case == "missing" else "no readable metrics.json") in err[-1]
    assert not (target / "summary.csv").exists()


def test_module_entry_point_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m odenet.report`` exits with main()'s code (run in-process: no second torch import)."""
    monkeypatch.setattr(sys, "argv", ["odenet.report", str(tmp_path / "missing")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": harmless for this check
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module("odenet.report", run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: no such directory: {tmp_path / 'missing'}"


@pytest.mark.parametrize("sweep_dir", ["empty", "missing", "${unresolvable}"])
def test_callback_never_raises(tmp_path: Path, sweep_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    target = sweep_dir if sweep_dir.startswith("$") else str(tmp_path / sweep_dir)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": target}}})
    with caplog.at_level(logging.WARNING, logger="odenet.reports"):
        ReportCallback().on_multirun_end(config=config)
    assert any("no report written" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "empty" / "summary.csv").exists()


@pytest.mark.usefixtures("no_plots")
def test_callback_writes_report(sweep: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with caplog.at_level(logging.INFO, logger="odenet.reports"):
        ReportCallback().on_multirun_end(config=config)
    assert (sweep / "summary.csv").is_file() and (sweep / "report.md").is_file()
    assert any("wrote" in r.getMessage() and "report.md" in r.getMessage() for r in caplog.records)


def test_callback_in_a_real_hydra_multirun(tmp_path: Path) -> None:
    """Hydra resolves the ${now:} sweep dir at the end of the multirun to the dir the jobs wrote."""
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            import json, sys, types
            from pathlib import Path
            import hydra
            from hydra.core.hydra_config import HydraConfig
            # odenet as a bare namespace: odenet.report loads without odenet/__init__ (torch), for speed
            package = types.ModuleType("odenet")
            package.__path__ = [str(Path(sys.argv.pop(1)) / "odenet")]
            sys.modules["odenet"] = package
            sys.path.insert(0, sys.argv.pop(1))
            from test_report import _metrics
            from odenet.reports import registry
            registry.PLOTS.clear()  # tables only: rendering is covered elsewhere

            @hydra.main(version_base=None, config_path=None, config_name=None)
            def task(cfg):
                out = Path(HydraConfig.get().runtime.output_dir)
                (out / "metrics.json").write_text(json.dumps(_metrics(int(cfg.steps), int(cfg.seed))))

            if __name__ == "__main__":
                task()
            """
        )
    )
    cmd = [sys.executable, str(app), str(REPO), str(Path(__file__).parent), "-m", "+steps=2,4", "+seed=1"]
    cmd += ["hydra.sweep.dir=multirun/${now:%H-%M-%S-%f}", "hydra/job_logging=disabled"]
    cmd += ["+hydra.callbacks.report._target_=odenet.report.ReportCallback"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    [sweep_dir] = list((tmp_path / "multirun").iterdir())
    header, rows = _read_csv(sweep_dir / "summary.csv")
    assert header == COLUMNS  # the overrides come from metrics.json, as the runner writes them
    assert [(r["run_dir"], r["seed"]) for r in rows] == [("0", "1")] * 6 + [("1", "1")] * 6
    assert (sweep_dir / "report.md").is_file()


def test_a_full_disk_during_a_report_fails_the_command_and_keeps_the_old_files(tmp_path, monkeypatch, capsys):
    import errno
    import os as os_module

    from odenet.reports import main as report_main

    run = tmp_path / "sweep" / "seed=0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "status": "ok", "seed": 0, "overrides": {"seed": "0"},
        "train": {"solver": "euler", "steps": 4, "step_size": 0.25},
        "evaluations": [{"test_solver": "euler", "test_steps": 4, "test_step_size": 0.25, "accuracy": 0.9,
                         "loss": 0.3, "nfe": 4.0, "status": "ok", "is_train_solver": True}]}))
    sweep = tmp_path / "sweep"
    assert report_main([str(sweep)]) == 0
    before = {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    real_fdopen = os_module.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    assert report_main([str(sweep)]) == 1
    monkeypatch.undo()
    assert "No space left on device" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    assert after == before  # every file as it was, and no temp file left behind
