"""Collect the ``metrics.json`` of finished runs into a CSV table, a markdown report and plots.

``python -m odenet.report DIR`` (or :class:`ReportCallback` at the end of a Hydra multirun) finds
every ``metrics.json`` under DIR, flattens them into one long table (one row per trained model x
evaluation, see :func:`collect`) and writes ``summary.csv``, ``report.md`` and the PNG plots
registered in :data:`PLOTS` into DIR. Experiment-specific plots are added with :func:`register_plot`.

Extensions: the modules named in :data:`EXTENSIONS` (``odenet.analysis.step_size``,
``odenet.analysis.smoothness_report``) are imported
before a report is written and may register more: markdown sections (:func:`register_section`,
``fn(rows, root) -> lines | None``) and plots that read the run dirs themselves, e.g. to reload
trained models (:func:`register_dir_plot`, ``fn(rows, root) -> Figure | None``). Each returns
``None`` when the data do not fit it (no 2-D inputs, one step size only, ...); an extension that
raises is logged and skipped, never stopping the report.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import re
import statistics
import sys
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from omegaconf import DictConfig, OmegaConf

from ..runner.io import write_csv as atomic_csv

log = logging.getLogger(__name__)

METRICS = "metrics.json"
SUMMARY = "summary.csv"
REPORT = "report.md"
MAX_PNG_BYTES = 300_000
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
)

Row = dict[str, Any]
PlotFn = Callable[[list[Row]], Figure | None]
#: ``fn(rows, root)``: the rows and the directory they were collected from (run dirs are ``root / row["run_dir"]``).
DirPlotFn = Callable[[list[Row], Path], Figure | None]
SectionFn = Callable[[list[Row], Path], list[str] | None]


class ReportError(RuntimeError):
    """Nothing to report: the directory is missing or holds no readable ``metrics.json``."""


# ----------------------------------------------------------------------------------------------
# Collecting


@dataclass
class _Scan:
    rows: list[Row] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # run dirs without metrics.json
    unreadable: list[str] = field(default_factory=list)  # metrics.json that could not be parsed


def _natural_key(text: str) -> list[tuple[int, int, str]]:
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


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("skipping %s: unreadable (%s)", path, err)
        return None
    if not isinstance(data, dict):
        log.warning("skipping %s: not a JSON object", path)
        return None
    return data


def _run_rows(data: dict[str, Any], run_dir: str) -> list[Row]:
    """The rows of one metrics.json, before the override columns are added."""
    train = data.get("train") or {}
    run_ok = data.get("status") == "ok"
    run_reason = data.get("reason")
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
            }
        )
    return rows


def _scan(dir: str | Path) -> _Scan:
    root = _root(dir)
    found = [p for p in root.rglob(METRICS) if p.is_file() and not _is_hidden(p.parent, root)]
    found.sort(key=lambda p: _natural_key(_rel(p.parent, root)))
    scan = _Scan()
    for d in _run_dirs_without_metrics(root, {p.parent for p in found}):
        scan.incomplete.append(_rel(d, root) or ".")
        log.warning("skipping %s: no %s (still running or killed)", d, METRICS)
    per_run: list[tuple[dict[str, str], list[Row]]] = []
    for path in found:
        data = _load(path)
        if data is None:
            scan.unreadable.append(_rel(path, root))
            continue
        overrides = data.get("overrides") or {}
        per_run.append(({str(k): v for k, v in overrides.items()}, _run_rows(data, _rel(path.parent, root) or ".")))
    keys: list[str] = []  # override keys, in order of first appearance; the base columns win clashes
    for overrides, _ in per_run:
        keys += [k for k in overrides if k not in keys and k not in BASE_COLUMNS]
    for overrides, rows in per_run:
        scan.rows += [{**{k: overrides.get(k) for k in keys}, **row} for row in rows]
    return scan


def collect(dir: str | Path) -> list[Row]:
    """One row per trained model x evaluation for every ``metrics.json`` under ``dir`` (recursively).

    Columns: one per swept setting (Hydra override key, value string; ``None`` where a run lacks it),
    then :data:`BASE_COLUMNS`. A run without evaluations still gives one row (its status and reason).
    Run dirs without ``metrics.json`` and unreadable files are skipped with a logged warning.
    Raises :class:`ReportError` if ``dir`` does not exist.
    """
    return _scan(dir).rows


def columns(rows: Sequence[Row]) -> list[str]:
    """The column order of ``rows`` (override keys first, then :data:`BASE_COLUMNS`)."""
    return list(rows[0]) if rows else list(BASE_COLUMNS)


# ----------------------------------------------------------------------------------------------
# Aggregating


@dataclass(frozen=True)
class Stats:
    """Summary of one metric over seeds."""

    mean: float
    std: float | None  # sample std; None for a single value
    lo: float
    hi: float
    n: int


def stats(values: Iterable[float | None]) -> Stats | None:
    """Mean, sample std, min and max of the finite values (``None`` if there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Stats(statistics.fmean(vals), std, min(vals), max(vals), len(vals))


def mean_std(values: Iterable[float | None], fmt: str = "{:.4f}") -> str:
    """``"mean ± std"`` of the finite values in ``fmt`` (one value alone, ``–`` if none); the std drops a ``+`` sign."""
    s = stats(values)
    if s is None:
        return "–"
    if s.std is None:
        return fmt.format(s.mean)
    return f"{fmt.format(s.mean)} ± {fmt.replace('+', '').format(s.std)}"


def _sort_value(value: Any) -> tuple[int, Any]:
    """Orders None last and keeps numbers and strings apart."""
    if value is None:
        return (2, "")
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, _natural_key(str(value)))


def _sort_key(key: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    return tuple(_sort_value(v) if not isinstance(v, tuple) else (3, _sort_key(v)) for v in key)


def _is_seed_key(key: str) -> bool:
    return "seed" in key.rsplit(".", 1)[-1].lower()


def setting_keys(rows: Sequence[Row]) -> list[str]:
    """Swept settings that tell trained models apart beyond the training solver and step.

    Override keys, except seeds and keys fixed by (train_solver, train_steps, train_step_size)
    such as ``solver.steps``.
    """
    keys = [c for c in columns(rows) if c not in BASE_COLUMNS and not _is_seed_key(c)]
    kept = []
    for k in keys:
        seen: dict[tuple[Any, ...], set[Any]] = {}
        for r in rows:
            if r["train_solver"] is None:  # a failed run that never reported its training config
                continue
            seen.setdefault((r["train_solver"], r["train_steps"], r["train_step_size"]), set()).add(r[k])
        if any(len(v) > 1 for v in seen.values()):
            kept.append(k)
    return kept


def model_key(row: Row, settings: Sequence[str]) -> tuple[Any, ...]:
    """Identifies a trained model configuration (everything but the seed)."""
    return (row["train_solver"], row["train_steps"], row["train_step_size"], tuple(row[k] for k in settings))


def eval_key(row: Row) -> tuple[Any, ...]:
    """Identifies a test evaluation."""
    return (row["test_solver"], row["test_steps"], row["test_step_size"], row["rtol"], row["atol"])


def _is_adaptive(row: Row) -> bool:
    return row["test_steps"] is None and row["test_step_size"] is None


def _at_train_step(row: Row) -> bool:
    """Evaluated at the training step size (or with the training solver itself)."""
    if row["is_train_solver"]:
        return True
    if row["test_step_size"] is not None and row["train_step_size"] is not None:
        return math.isclose(row["test_step_size"], row["train_step_size"], rel_tol=1e-9)
    return row["test_steps"] is not None and row["test_steps"] == row["train_steps"]


def _ok(row: Row, metric: str = "accuracy") -> bool:
    return row["status"] == "ok" and row["test_solver"] is not None and row[metric] is not None


def _group(rows: Iterable[Row], key: Callable[[Row], Hashable]) -> dict[Hashable, list[Row]]:
    groups: dict[Hashable, list[Row]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


# ----------------------------------------------------------------------------------------------
# Formatting


def fmt_h(h: float | None) -> str:
    """A step size as ``1/8`` when it is the inverse of an integer, else ``%g``."""
    if h is None:
        return ""
    if 0 < h < 1 and abs(1 / h - round(1 / h)) < 1e-6:
        return f"1/{round(1 / h)}"
    return f"{h:g}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _fmt_stats(s: Stats | None, digits: int = 4) -> str:
    if s is None:
        return "–"
    if s.std is None:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def model_label(key: tuple[Any, ...], settings: Sequence[str]) -> str:
    """``euler N=8 (h=1/8)`` plus any further swept settings."""
    solver, steps, h, extra = key
    label = str(solver) if solver is not None else "?"
    if steps is not None:
        label += f" N={steps}"
    label += f" (h={fmt_h(h)})" if h is not None else (" (adaptive)" if steps is None else "")
    if extra:
        label += ", " + ", ".join(f"{k}={_fmt(v)}" for k, v in zip(settings, extra))
    return label


def eval_label(key: tuple[Any, ...]) -> str:
    """``rk4 N=4 (h=1/4)`` or ``dopri5 rtol=1e-06``."""
    solver, steps, h, rtol, atol = key
    label = str(solver)
    if steps is not None:
        label += f" N={steps}"
    if h is not None:
        label += f" (h={fmt_h(h)})"
    if rtol is not None:
        label += f" rtol={rtol:g}"
    return label


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in body]
    return lines + [""]


# ----------------------------------------------------------------------------------------------
# Writing


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """Write ``rows`` atomically in the report's column order (``None`` as an empty field)."""
    return atomic_csv(Path(path), rows, columns(rows))


def _sweep_overrides(root: Path) -> str | None:
    """The sweep's task overrides from Hydra's ``multirun.yaml``, if there is one."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task")
        return " ".join(str(t) for t in task) if task is not None else None
    except Exception:  # a malformed file must not stop the report
        return None


def render_markdown(
    rows: Sequence[Row],
    root: Path,
    files: Sequence[Path] = (),
    incomplete: Sequence[str] = (),
    unreadable: Sequence[str] = (),
    out_dir: Path | None = None,
    sections: Sequence[Sequence[str]] = (),
) -> str:
    """The markdown report: accuracy tables, failures, skipped run dirs and the files written.

    ``sections`` (markdown lines each, e.g. from :func:`extension_sections`) follow the table of
    accuracy at the training step size.
    """
    settings = setting_keys(rows)
    runs = _group(rows, lambda r: r["run_dir"])
    failed_runs = [rs[0] for rs in runs.values() if rs[0]["status"] == "failed" and rs[0]["test_solver"] is None]
    n_failed = sum(1 for rs in runs.values() if all(r["status"] == "failed" for r in rs))
    lines = [
        "# odenet report",
        "",
        f"Source: `{root.resolve()}` — {len(runs)} runs ({len(runs) - n_failed} ok, {n_failed} failed), "
        f"{sum(1 for r in rows if r['test_solver'] is not None)} evaluations"
        + (f", {len(incomplete)} run dir(s) without {METRICS} (skipped)" if incomplete else "")
        + ".",
        "",
    ]
    overrides = _sweep_overrides(root)
    if overrides:
        lines += [f"Sweep overrides: `{overrides}`", ""]
    lines += [
        "Accuracy is the mean ± sample std over seeds; `seeds` counts ok / all evaluations of that cell; "
        "NFE is the mean number of vector-field evaluations per forward pass.",
        "",
    ]

    models = _group((r for r in rows if r["test_solver"] is not None), lambda r: model_key(r, settings))
    order = sorted(models, key=_sort_key)

    matched = [r for r in rows if r["test_solver"] is not None and (_is_adaptive(r) or _at_train_step(r))]
    if matched:
        columns_ = sorted({_matched_series(r) for r in matched}, key=lambda s: (s[0] != "fixed", s))
        cells = _group(matched, lambda r: (model_key(r, settings), _matched_series(r)))
        lines += ["## Accuracy at the training step size", ""]
        lines += _md_table(
            ["trained model", *(name for _, name in columns_)],
            (
                [model_label(m, settings)]
                + [_fmt_stats(stats(r["accuracy"] for r in cells.get((m, c), []) if _ok(r))) for c in columns_]
                for m in order
            ),
        )

    for section in sections:
        lines += [*section, ""] if section and section[-1] != "" else list(section)

    lines += ["## All evaluations", ""]
    for m in order:
        lines += [f"### Trained with {model_label(m, settings)}", ""]
        evals = _group(models[m], eval_key)
        body = []
        for e in sorted(evals, key=lambda e: (e[2] is None and e[1] is None, _sort_key(e))):
            group = evals[e]
            ok = [r for r in group if _ok(r)]
            nfe = stats(r["nfe"] for r in ok)
            solver = str(e[0]) + (" (train)" if any(r["is_train_solver"] for r in group) else "")
            body.append(
                [
                    solver,
                    _fmt(e[1]),
                    fmt_h(e[2]),
                    _fmt(e[3]),
                    _fmt(e[4]),
                    _fmt_stats(stats(r["accuracy"] for r in ok)),
                    f"{len(ok)}/{len(group)}",
                    f"{nfe.mean:.1f}" if nfe else "–",
                ]
            )
        lines += _md_table(["test solver", "N", "h", "rtol", "atol", "accuracy", "seeds", "mean NFE"], body)

    lines += ["## Failures", ""]
    failed_evals = [r for r in rows if r["status"] == "failed" and r["test_solver"] is not None]
    if not failed_runs and not failed_evals:
        lines += ["None.", ""]
    for r in failed_runs:
        lines.append(f"- run `{r['run_dir']}` (seed {_fmt(r['seed'])}, {_train_text(r)}): {_fmt(r['reason']) or '?'}")
    for r in failed_evals:
        lines.append(
            f"- evaluation {eval_label(eval_key(r))} of `{r['run_dir']}` (seed {_fmt(r['seed'])}, "
            f"{_train_text(r)}): {_fmt(r['reason']) or '?'}"
        )
    if failed_runs or failed_evals:
        lines.append("")
    if incomplete or unreadable:
        lines += ["## Skipped", ""]
        lines += [f"- `{d}`: no {METRICS} (still running or killed)" for d in incomplete]
        lines += [f"- `{p}`: unreadable {METRICS}" for p in unreadable]
        lines.append("")

    lines += ["## Files", ""]
    lines += [f"- `{p.name}`" for p in files]
    lines += [""] + [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in files if p.suffix == ".png"]
    command = f"python -m odenet.report {root.resolve()}"
    if out_dir is not None and out_dir.resolve() != root.resolve():
        command += f" --out {out_dir.resolve()}"
    lines += ["", f"Regenerate with `{command}`.", ""]
    return "\n".join(lines)


def _train_text(row: Row) -> str:
    if row["train_solver"] is None:
        return "training config unknown"
    return "trained with " + model_label((row["train_solver"], row["train_steps"], row["train_step_size"], ()), [])


def write_report(dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``summary.csv``, ``report.md`` and the registered plots for the runs under ``dir``.

    Files go to ``out_dir`` (default: ``dir``). Plots whose data is absent are skipped (and a stale
    file of that name removed). Returns the paths written: CSV, markdown, then PNGs.
    Raises :class:`ReportError` if ``dir`` is missing or holds no readable ``metrics.json``.
    """
    root = _root(dir)
    scan = _scan(root)
    if not scan.rows:
        raise ReportError(f"no readable {METRICS} under {root}")
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(scan.rows, out / SUMMARY)
    plots: list[tuple[str, Callable[[], Figure | None]]] = [(n, partial(fn, scan.rows)) for n, fn in PLOTS.items()]
    plots += [(n, partial(_guarded, f"plot {n}", fn, scan.rows, root)) for n, fn in DIR_PLOTS.items()]
    pngs = []
    for name, make in plots:
        path = out / name
        fig = make()
        if fig is None:
            if path.exists():
                path.unlink()
                log.info("removed stale %s (no data for it now)", path)
            continue
        pngs.append(save_figure(fig, path))
    md_path = out / REPORT
    sections = extension_sections(scan.rows, root)
    md_path.write_text(
        render_markdown(scan.rows, root, [csv_path, *pngs], scan.incomplete, scan.unreadable, out, sections)
    )
    return [csv_path, md_path, *pngs]


# ----------------------------------------------------------------------------------------------
# Extensions: markdown sections and plots from other modules

SECTIONS: dict[str, SectionFn] = {}
DIR_PLOTS: dict[str, DirPlotFn] = {}


def _register(registry: dict[str, Any], name: str) -> Callable[[Any], Any]:
    """A decorator that stores its function in ``registry`` under ``name``."""

    def deco(fn: Any) -> Any:
        registry[name] = fn
        return fn

    return deco


def register_section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Decorator adding a markdown section to every report: ``fn(rows, root) -> lines | None`` (None: skip)."""
    return _register(SECTIONS, name)


def register_dir_plot(filename: str) -> Callable[[DirPlotFn], DirPlotFn]:
    """Decorator adding a plot that reads the run dirs: ``fn(rows, root) -> Figure | None`` (None: skip)."""
    return _register(DIR_PLOTS, filename)


def _guarded(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        log.exception("report: %s failed; skipped", what)
        return None


def extension_sections(rows: list[Row], root: Path) -> list[list[str]]:
    """The markdown lines of every registered section that applies to ``rows`` (in registration order)."""
    out = []
    for name, fn in SECTIONS.items():
        lines = _guarded(f"section {name!r}", fn, rows, root)
        if lines:
            out.append(list(lines))
    return out


# ----------------------------------------------------------------------------------------------
# Plots

PLOTS: dict[str, PlotFn] = {}


def register_plot(filename: str) -> Callable[[PlotFn], PlotFn]:
    """Decorator adding a plot to every report: ``fn(rows) -> Figure | None`` (None: no data, skip)."""
    return _register(PLOTS, filename)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG with the Agg backend, under :data:`MAX_PNG_BYTES`.

    A figure too large at ``dpi`` is reduced to a 256-colour palette (plots have few colours), then
    saved at lower dpi if need be.
    """
    path = Path(path)
    FigureCanvasAgg(fig)
    for d in (dpi, int(dpi * 0.8), int(dpi * 0.64)):
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=d, format="png")
        data = buffer.getvalue()
        if len(data) > MAX_PNG_BYTES:
            data = _palette_png(data)
        if len(data) <= MAX_PNG_BYTES:
            break
    path.write_bytes(data)
    return path


def _palette_png(data: bytes) -> bytes:
    from PIL import Image  # a matplotlib dependency

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


def _solver_colors(rows: Sequence[Row]) -> dict[str, Any]:
    names = sorted({str(r[k]) for r in rows for k in ("train_solver", "test_solver") if r[k] is not None})
    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _matched_series(row: Row) -> tuple[str, str]:
    """Line of a row in the plots over the training step size: (kind, label)."""
    if _is_adaptive(row):
        tol = f", rtol={row['rtol']:g}" if row["rtol"] is not None else ""
        return ("adaptive", f"{row['test_solver']} (adaptive{tol})")
    return ("fixed", str(row["test_solver"]))


def _log2_xticks(ax: Axes, values: Iterable[float], label: Callable[[float], str]) -> None:
    """Log2 x axis with a labelled tick at each data value."""
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [label(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _grid(n: int, width: float = 4.6, height: float = 3.6, cols: int = 3) -> tuple[Figure, list[Axes]]:
    ncols = min(n, cols)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols + 2.2, height * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend_union(axes: Sequence[Axes]) -> dict[str, Any]:
    """Legend label -> handle over all panels, first occurrence first."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return seen


def _line(ax: Axes, points: dict[float, Stats], band: bool = True, **kw: Any) -> None:
    xs = sorted(points)
    means = [points[x].mean for x in xs]
    ax.plot(xs, means, marker=kw.pop("marker", "o"), markersize=kw.pop("markersize", 5), **kw)
    if band and any(points[x].n > 1 for x in xs):
        ax.fill_between(xs, [points[x].lo for x in xs], [points[x].hi for x in xs], color=kw.get("color"), alpha=0.15)


def _plot_vs_train_step(rows: list[Row], metric: str, title: str, ylabel: str, log_y: bool) -> Figure | None:
    """``metric`` vs training step size, one line per test solver at the training step size (+ adaptive)."""
    settings = setting_keys(rows)
    usable = [
        r
        for r in rows
        if _ok(r, metric) and r["train_step_size"] is not None and (_is_adaptive(r) or _at_train_step(r))
    ]
    panels = _group(usable, lambda r: (r["train_solver"], tuple(r[k] for k in settings)))
    series = {p: _group(rs, _matched_series) for p, rs in panels.items()}
    if not any(len({r["train_step_size"] for r in rs}) > 1 for s in series.values() for rs in s.values()):
        return None
    colors = _solver_colors(rows)
    order = sorted(series, key=_sort_key)
    fig, axes = _grid(len(order), width=6.0, height=4.2)
    steps_of = {r["train_step_size"]: r["train_steps"] for r in usable}
    shared_legend = len(order) > 1  # one legend outside the panels; thick line = that panel's training solver
    band = max(len(s) for s in series.values()) <= 6  # more overlapping bands turn into mud
    for ax, panel in zip(axes, order):
        train_solver, extra = panel
        adaptive_styles = iter(["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))] * 8)
        for kind, label in sorted(series[panel], key=lambda s: (s[0] != "fixed", s[1] != train_solver, s[1])):
            group = series[panel][(kind, label)]
            points = {
                h: stats(r[metric] for r in rs) for h, rs in _group(group, lambda r: r["train_step_size"]).items()
            }
            is_train = kind == "fixed" and label == train_solver
            _line(
                ax,
                points,
                label=f"{label} (training solver)" if is_train and not shared_legend else label,
                color=colors.get(str(group[0]["test_solver"])),
                linestyle=next(adaptive_styles) if kind == "adaptive" else "-",
                band=band,
                linewidth=2.6 if is_train else 1.6,
                marker="s" if kind == "adaptive" else "o",
                zorder=3 if is_train else 2,
            )
        hs = [r["train_step_size"] for r in panels[panel]]
        _log2_xticks(ax, hs, lambda h: f"{fmt_h(h)}\nN={_fmt(steps_of.get(h))}" if steps_of.get(h) else fmt_h(h))
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("training step size h = T/N (log₂ scale)")
        extra_text = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(settings, extra))
        ax.set_title(f"trained with {train_solver}" + (f", {extra_text}" if extra_text else ""), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if not shared_legend:
            ax.legend(title="test solver (fixed-step: at the training h)", fontsize=8, title_fontsize=8)
    for ax in axes[:: min(len(axes), 3)]:
        ax.set_ylabel(ylabel)
    if shared_legend:
        handles = _legend_union(axes)
        handles["training solver of the panel"] = axes[0].plot([], [], color="black", linewidth=2.6)[0]
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside right upper",
            title="test solver\n(fixed-step: at the training h)",
            fontsize=8,
            title_fontsize=9,
        )
    spread = "shaded band: min–max over seeds" if band else "no bands: too many lines"
    fig.suptitle(f"{title}\n(mean over seeds; {spread})", fontsize=11)
    return fig


@register_plot("accuracy_vs_train_step.png")
def plot_accuracy_vs_train_step(rows: list[Row]) -> Figure | None:
    """Test accuracy vs training step size h, per test solver used at the training step size."""
    return _plot_vs_train_step(
        rows, "accuracy", "Test accuracy vs training step size", "test accuracy (fraction correct)", log_y=False
    )


@register_plot("accuracy_vs_test_steps.png")
def plot_accuracy_vs_test_steps(rows: list[Row]) -> Figure | None:
    """Small multiples, one per fixed-step test solver: accuracy vs test steps, one line per trained model."""
    settings = setting_keys(rows)
    usable = [r for r in rows if _ok(r) and r["test_steps"] is not None]
    lines = _group(usable, lambda r: (r["test_solver"], model_key(r, settings)))
    if not any(len({r["test_steps"] for r in rs}) > 1 for rs in lines.values()):
        return None
    solvers = sorted({r["test_solver"] for r in usable}, key=_sort_value)
    models = sorted({model_key(r, settings) for r in usable}, key=_sort_key)
    cmap = colormaps["viridis"]
    color = {m: cmap(0.9 * i / max(len(models) - 1, 1)) for i, m in enumerate(models)}
    styles = ["-", "--", ":", "-."]
    train_solvers = sorted({m[0] for m in models}, key=_sort_value)
    band = len(models) <= 6  # more overlapping bands turn into mud (and bloat the PNG)
    fig, axes = _grid(len(solvers))
    for ax, solver in zip(axes, solvers):
        for m in models:
            group = lines.get((solver, m))
            if not group:
                continue
            by_n = _group(group, lambda r: r["test_steps"])
            points = {n: stats(r["accuracy"] for r in rs) for n, rs in by_n.items()}
            _line(
                ax,
                points,
                band=band,
                label=model_label(m, settings),
                color=color[m],
                linestyle=styles[train_solvers.index(m[0]) % len(styles)],
                linewidth=1.6,
            )
            own = [n for n, rs in by_n.items() if any(r["is_train_solver"] for r in rs)]
            if own:
                ax.plot(
                    own,
                    [points[n].mean for n in own],
                    marker="*",
                    markersize=13,
                    color=color[m],
                    markeredgecolor="black",
                    linestyle="none",
                    zorder=4,
                )
        _log2_xticks(ax, [r["test_steps"] for r in usable if r["test_solver"] == solver], lambda n: f"{n:g}")
        ax.set_title(f"tested with {solver}", fontsize=10)
        ax.set_xlabel("test steps N (log₂ scale)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:: min(len(axes), 3)]:
        ax.set_ylabel("test accuracy (fraction correct)")
    seen = _legend_union(axes)
    seen["training solver and steps"] = axes[0].plot(
        [], [], marker="*", markersize=11, color="grey", markeredgecolor="black", linestyle="none"
    )[0]
    fig.legend(
        list(seen.values()), list(seen), loc="outside right upper", title="trained model", fontsize=8, title_fontsize=9
    )
    spread = "shaded band: min–max over seeds" if band else "no bands: too many lines"
    fig.suptitle(f"Test accuracy vs number of test steps, per trained model\n(mean over seeds; {spread})", fontsize=11)
    return fig


@register_plot("nfe.png")
def plot_nfe(rows: list[Row]) -> Figure | None:
    """Mean NFE vs training step size h, per test solver used at the training step size."""
    return _plot_vs_train_step(
        rows,
        "nfe",
        "Function evaluations vs training step size",
        "NFE (field evaluations per forward pass, log scale)",
        log_y=True,
    )


# ----------------------------------------------------------------------------------------------
# Hydra callback and CLI


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends.

    Enable with ``hydra.callbacks.report._target_=odenet.report.ReportCallback``. It never raises:
    a sweep that produced nothing, or a failure while reporting, is logged and the sweep ends normally.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as err:
            log.warning("report: cannot resolve hydra.sweep.dir (%s); no report written", err)
            return
        try:
            paths = write_report(sweep_dir)
        except ReportError as err:
            log.warning("report: %s; no report written", err)
            return
        except Exception:
            log.exception("report: writing the report for %s failed", sweep_dir)
            return
        log.info("report: wrote %s", ", ".join(str(p) for p in paths))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m odenet.report DIR [--out OUT]``: write the report and print the paths written."""
    parser = argparse.ArgumentParser(
        prog="python -m odenet.report",
        description="Collect every metrics.json under DIR into summary.csv, report.md and PNG plots.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run or sweep (multirun) directory")
    parser.add_argument("--out", metavar="OUT", default=None, help="where to write (default: DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        paths = write_report(args.dir, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
