"""Finding run folders and flattening their ``metrics.json`` into rows; the context every section and plot gets.

:func:`collect` gives one row per trained model x evaluation for every run folder under a directory;
:class:`ReportContext` holds those rows with the folders themselves (one :class:`~odenet.runner.rundir.RunDir`
each, so a report reads every file and loads every model once) and the report's options.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runner.rundir import RunDir

log = logging.getLogger(__name__)

METRICS = RunDir.METRICS
SUMMARY = "summary.csv"
REPORT = "report.md"
#: Why a job folder has no ``metrics.json``.
NO_METRICS = "the job failed before writing it, was killed, or is still running"
#: Columns of every row after the swept settings (one column per Hydra override key).
BASE_COLUMNS = (
    "train_solver",
    "train_steps",
    "train_step_size",
    "test_solver",
    "test_steps",
    "test_step_size",
    "rtol",
    "atol",
    "is_train_solver",
    "accuracy",
    "loss",
    "nfe",
    "seed",
    "status",
    "reason",
    "run_dir",
    "baseline_accuracy",
    "beats_baseline",
    "smoke",
)
#: A classifier *beats its majority-class baseline* when its test accuracy under its training solver is above the
#: accuracy of always predicting the most frequent training class (``metrics.json["baseline_accuracy"]``) by more
#: than this: half a point, i.e. at least one more correct test example on test sets under 200 examples, and at
#: least 0.5 % of them on larger ones. A model that does not is *at chance*; conclusions resting on it are withheld.
CHANCE_MARGIN = 0.005

Row = dict[str, Any]


def beats_baseline(accuracy: float | None, baseline: float | None) -> bool | None:
    """``accuracy > baseline + CHANCE_MARGIN``; None when either is unknown (regression: no baseline)."""
    if accuracy is None or baseline is None:
        return None
    return float(accuracy) > float(baseline) + CHANCE_MARGIN


def train_evaluation(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ok evaluation of a ``metrics.json`` under the training solver (``{}`` when there is none)."""
    for ev in metrics.get("evaluations") or []:
        if isinstance(ev, dict) and ev.get("is_train_solver") and (ev.get("status") or "ok") == "ok":
            return ev
    return {}


def run_beats_baseline(metrics: dict[str, Any] | None) -> bool | None:
    """Whether an ok run's model beats its majority-class baseline under its training solver (:func:`beats_baseline`);
    None for a failed run, a run without that evaluation, and a run without a baseline (regression, older runs)."""
    if not metrics or metrics.get("status") != "ok":
        return None
    return beats_baseline(train_evaluation(metrics).get("accuracy"), metrics.get("baseline_accuracy"))


class ReportError(RuntimeError):
    """Nothing to report: the directory is missing or holds no readable ``metrics.json``."""


@dataclass
class ReportContext:
    """What a report section or plot gets: the rows, where they came from, the run folders and the options.

    ``runs`` maps a row's ``run_dir`` (relative to ``root``) to its :class:`RunDir`; :meth:`run` makes one on
    demand, so a context built from rows alone (``ReportContext(rows, root)``) works too.
    """

    rows: list[Row]
    root: Path
    runs: dict[str, RunDir] = field(default_factory=dict)
    #: ``--grid``: a fixed-step sweep (its ``summary.csv``, or the folder holding it) to compare with.
    grid: Path | None = None
    #: Hydra job folders without ``metrics.json`` (failed before writing it, killed or still running), and
    #: unreadable ``metrics.json``.
    incomplete: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, dir: str | Path, grid: str | Path | None = None) -> ReportContext:
        """Every run folder under ``dir`` (see :func:`collect`); raises :class:`ReportError` if ``dir`` is missing."""
        root = _root(dir)
        ctx = cls([], root, grid=Path(grid) if grid is not None else None)
        _scan(ctx)
        return ctx

    def run(self, run_dir: str) -> RunDir:
        """The run folder of a row's ``run_dir`` (one :class:`RunDir` per folder and report)."""
        if run_dir not in self.runs:
            self.runs[run_dir] = RunDir(self.root / run_dir)
        return self.runs[run_dir]

    def run_dirs(self, rows: Sequence[Row] | None = None) -> list[tuple[str, RunDir]]:
        """``(run_dir, RunDir)`` of every folder among ``rows`` (default: all rows), in row order, once each."""
        return [(d, self.run(d)) for d in dict.fromkeys(r["run_dir"] for r in (self.rows if rows is None else rows))]

    def beats_baseline(self, run_dir: str) -> bool | None:
        """:func:`run_beats_baseline` of a run folder."""
        return run_beats_baseline(self.run(run_dir).metrics)

    def at_chance(self, run_dirs: Iterable[str]) -> list[str]:
        """The run folders among ``run_dirs`` (once each) whose model did not beat its majority-class baseline."""
        return [d for d in dict.fromkeys(run_dirs) if self.beats_baseline(d) is False]

    def smoke(self, run_dir: str) -> bool:
        """The run is a ``+debug=smoke`` run (its numbers check the machinery and mean nothing)."""
        return bool((self.run(run_dir).metrics or {}).get("smoke"))

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per report for ``key`` (e.g. a data set that several sections need)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


# ----------------------------------------------------------------------------------------------


def natural_key(text: str) -> list[tuple[int, int, str]]:
    """Sort key that orders ``2`` before ``10``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _root(dir: str | Path) -> Path:
    root = Path(dir)
    if not root.is_dir():
        raise ReportError(f"no such directory: {root}")
    return root


def _run_dirs_without_metrics(root: Path, with_metrics: set[Path]) -> list[Path]:
    """Hydra job dirs (holding ``.hydra/`` or named by a job number) with no metrics.json below them.

    Dirs inside a run dir (checkpoints/1000, say) or inside a job dir already reported are not jobs.
    """
    above = {p for m in with_metrics for p in (m, *m.parents)}  # run dirs and their ancestors
    dirs = sorted((p for p in root.rglob("*") if p.is_dir() and not _is_hidden(p, root)), key=lambda p: p.parts)
    missing: list[Path] = []
    for d in [root, *dirs]:
        if d in above or any(p in with_metrics or p in missing for p in d.parents):
            continue
        numbered_leaf = d != root and d.name.isdigit() and not any(c.is_dir() and c.name.isdigit() for c in d.iterdir())
        if (d / ".hydra").is_dir() or numbered_leaf:
            missing.append(d)
    return missing


def _run_rows(data: dict[str, Any], run_dir: str) -> list[Row]:
    """The rows of one metrics.json, before the override columns are added."""
    train = data.get("train") or {}
    run_ok = data.get("status") == "ok"
    run_reason = data.get("reason")
    if data.get("status") == "running" and not run_reason:
        run_reason = "did not finish (metrics.json says running: the job raised, was killed, or is still running)"
    chance = {
        "baseline_accuracy": data.get("baseline_accuracy"),
        "beats_baseline": run_beats_baseline(data),
        "smoke": bool(data.get("smoke", False)),
    }
    common = {
        "train_solver": train.get("solver"),
        "train_steps": train.get("steps"),
        "train_step_size": train.get("step_size"),
    }
    evaluations = [ev for ev in data.get("evaluations") or [] if isinstance(ev, dict)]
    if not evaluations:
        reason = run_reason if run_reason or not run_ok else "no evaluations"
        evaluations = [{"status": "ok" if run_ok else "failed", "reason": reason}]
    rows = []
    for ev in evaluations:
        ev_status = ev.get("status") or ("ok" if ev.get("accuracy") is not None else "failed")
        status = ev_status if run_ok else "failed"
        reason = ev.get("reason") or (None if run_ok else f"run failed: {run_reason or '?'}")
        rows.append(
            {
                **common,
                "test_solver": ev.get("test_solver"),
                "test_steps": ev.get("test_steps"),
                "test_step_size": ev.get("test_step_size"),
                "rtol": ev.get("rtol"),
                "atol": ev.get("atol"),
                "is_train_solver": bool(ev.get("is_train_solver", False)),
                "accuracy": ev.get("accuracy"),
                "loss": ev.get("loss"),
                "nfe": ev.get("nfe"),
                "seed": data.get("seed"),
                "status": status,
                "reason": reason,
                "run_dir": run_dir,
                **chance,
            }
        )
    return rows


def _scan(ctx: ReportContext) -> None:
    """Fill ``ctx`` with the rows, run folders, incomplete and unreadable ones under ``ctx.root``."""
    root = ctx.root
    found = [p.parent for p in root.rglob(METRICS) if p.is_file() and not _is_hidden(p.parent, root)]
    found.sort(key=lambda p: natural_key(_rel(p, root)))
    for d in _run_dirs_without_metrics(root, set(found)):
        ctx.incomplete.append(_rel(d, root) or ".")
        log.warning("skipping %s: no %s (%s)", d, METRICS, NO_METRICS)
    per_run: list[tuple[dict[str, str], list[Row]]] = []
    for path in found:
        rel = _rel(path, root) or "."
        run = RunDir(path)
        data = run.metrics
        if data is None:
            log.warning("skipping %s: unreadable (not a JSON object, or cut short)", run.file(METRICS))
            ctx.unreadable.append(_rel(run.file(METRICS), root))
            continue
        ctx.runs[rel] = run
        overrides = data.get("overrides") or {}
        per_run.append(({str(k): v for k, v in overrides.items()}, _run_rows(dict(data), rel)))
    keys: list[str] = []  # override keys, in order of first appearance; the base columns win clashes
    for overrides, _ in per_run:
        keys += [k for k in overrides if k not in keys and k not in BASE_COLUMNS]
    for overrides, rows in per_run:
        ctx.rows += [{**{k: overrides.get(k) for k in keys}, **row} for row in rows]


def collect(dir: str | Path) -> list[Row]:
    """One row per trained model x evaluation for every ``metrics.json`` under ``dir`` (recursively).

    Columns: one per swept setting (Hydra override key, value string; ``None`` where a run lacks it),
    then :data:`BASE_COLUMNS`, whose last three are the run's: its majority-class baseline accuracy, whether its
    model beats it (:func:`run_beats_baseline`; empty when unknown) and whether it is a smoke run. A run without
    evaluations still gives one row (its status and reason).
    Run dirs without ``metrics.json`` and unreadable files are skipped with a logged warning.
    Raises :class:`ReportError` if ``dir`` does not exist.
    """
    return ReportContext.load(dir).rows


def columns(rows: Sequence[Row]) -> list[str]:
    """The column order of ``rows`` (override keys first, then :data:`BASE_COLUMNS`)."""
    return list(rows[0]) if rows else list(BASE_COLUMNS)
