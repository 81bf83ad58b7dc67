"""Markdown: cell formats, labels of trained models and evaluations, tables, and the report itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..integrator import Integrator, fmt_h
from .collect import METRICS, ReportContext, Row
from .stats import (
    Stats,
    adaptive_eval,
    at_train_step,
    eval_key,
    group,
    matched_series,
    model_key,
    ok,
    setting_keys,
    sort_key,
    stats,
)


def fmt(value: Any) -> str:
    """A cell value: ``""`` for None, ``%g`` for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_stats(s: Stats | None, digits: int = 4) -> str:
    """``mean ± std`` with ``digits`` decimals (the mean alone for one value, ``–`` for none)."""
    if s is None:
        return "–"
    if s.std is None:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table (cells escaped), followed by an empty line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in body]
    return lines + [""]


def model_label(key: tuple[Any, ...], settings: Sequence[str]) -> str:
    """``euler N=8 (h=1/8)`` or ``dopri5 (adaptive)`` plus any further swept settings (a :func:`model_key`)."""
    solver, steps, h, extra = key
    integrator = Integrator.from_record(solver, steps, h)
    if integrator is None:
        label = "?"
    elif integrator.adaptive:
        label = f"{integrator.name} (adaptive)"
    else:
        label = integrator.label()
    if extra:
        label += ", " + ", ".join(f"{k}={fmt(v)}" for k, v in zip(settings, extra))
    return label


def eval_label(key: tuple[Any, ...]) -> str:
    """``rk4 N=4 (h=1/4)`` or ``dopri5 rtol=1e-06`` (an :func:`eval_key`)."""
    integrator = Integrator.from_record(*key)
    return integrator.label() if integrator is not None else str(key[0])


def train_text(row: Row) -> str:
    """``trained with euler N=8 (h=1/8)`` (or that the training config is unknown)."""
    if row["train_solver"] is None:
        return "training config unknown"
    return "trained with " + model_label((row["train_solver"], row["train_steps"], row["train_step_size"], ()), [])


def sweep_overrides(root: Path) -> str | None:
    """The sweep's task overrides from Hydra's ``multirun.yaml``, if there is one."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task")
        return " ".join(str(t) for t in task) if task is not None else None
    except Exception:  # a malformed file must not stop the report
        return None


def regenerate_command(ctx: ReportContext, out_dir: Path | None = None) -> str:
    """The command line that writes this report again."""
    command = f"python -m odenet.report {ctx.root.resolve()}"
    if out_dir is not None and out_dir.resolve() != ctx.root.resolve():
        command += f" --out {out_dir.resolve()}"
    if ctx.grid is not None:
        command += f" --grid {ctx.grid.resolve()}"
    return command


def render_markdown(
    ctx: ReportContext,
    files: Sequence[Path] = (),
    out_dir: Path | None = None,
    sections: Sequence[Sequence[str]] = (),
) -> str:
    """The markdown report: accuracy tables, failures, skipped run dirs and the files written.

    ``sections`` (markdown lines each, e.g. from :func:`odenet.reports.registry.sections`) follow the table of
    accuracy at the training step size.
    """
    rows, root = ctx.rows, ctx.root
    settings = setting_keys(rows)
    runs = group(rows, lambda r: r["run_dir"])
    failed_runs = [rs[0] for rs in runs.values() if rs[0]["status"] == "failed" and rs[0]["test_solver"] is None]
    n_failed = sum(1 for rs in runs.values() if all(r["status"] == "failed" for r in rs))
    incomplete = ctx.incomplete
    lines = [
        "# odenet report",
        "",
        f"Source: `{root.resolve()}` — {len(runs)} runs ({len(runs) - n_failed} ok, {n_failed} failed), "
        f"{sum(1 for r in rows if r['test_solver'] is not None)} evaluations"
        + (f", {len(incomplete)} run dir(s) without {METRICS} (skipped)" if incomplete else "")
        + ".",
        "",
    ]
    overrides = sweep_overrides(root)
    if overrides:
        lines += [f"Sweep overrides: `{overrides}`", ""]
    lines += [
        "Accuracy is the mean ± sample std over seeds; `seeds` counts ok / all evaluations of that cell; "
        "NFE is the mean number of vector-field evaluations per forward pass.",
        "",
    ]

    models = group((r for r in rows if r["test_solver"] is not None), lambda r: model_key(r, settings))
    order = sorted(models, key=sort_key)

    matched = [r for r in rows if r["test_solver"] is not None and (adaptive_eval(r) or at_train_step(r))]
    if matched:
        columns_ = sorted({matched_series(r) for r in matched}, key=lambda s: (s[0] != "fixed", s))
        cells = group(matched, lambda r: (model_key(r, settings), matched_series(r)))
        lines += ["## Accuracy at the training step size", ""]
        lines += md_table(
            ["trained model", *(name for _, name in columns_)],
            (
                [model_label(m, settings)]
                + [fmt_stats(stats(r["accuracy"] for r in cells.get((m, c), []) if ok(r))) for c in columns_]
                for m in order
            ),
        )

    for section in sections:
        lines += [*section, ""] if section and section[-1] != "" else list(section)

    lines += ["## All evaluations", ""]
    for m in order:
        lines += [f"### Trained with {model_label(m, settings)}", ""]
        evals = group(models[m], eval_key)
        body = []
        for e in sorted(evals, key=lambda e: (e[2] is None and e[1] is None, sort_key(e))):
            rs = evals[e]
            oks = [r for r in rs if ok(r)]
            nfe = stats(r["nfe"] for r in oks)
            solver = str(e[0]) + (" (train)" if any(r["is_train_solver"] for r in rs) else "")
            body.append(
                [
                    solver,
                    fmt(e[1]),
                    fmt_h(e[2]),
                    fmt(e[3]),
                    fmt(e[4]),
                    fmt_stats(stats(r["accuracy"] for r in oks)),
                    f"{len(oks)}/{len(rs)}",
                    f"{nfe.mean:.1f}" if nfe else "–",
                ]
            )
        lines += md_table(["test solver", "N", "h", "rtol", "atol", "accuracy", "seeds", "mean NFE"], body)

    lines += ["## Failures", ""]
    failed_evals = [r for r in rows if r["status"] == "failed" and r["test_solver"] is not None]
    if not failed_runs and not failed_evals:
        lines += ["None.", ""]
    for r in failed_runs:
        lines.append(f"- run `{r['run_dir']}` (seed {fmt(r['seed'])}, {train_text(r)}): {fmt(r['reason']) or '?'}")
    for r in failed_evals:
        lines.append(
            f"- evaluation {eval_label(eval_key(r))} of `{r['run_dir']}` (seed {fmt(r['seed'])}, "
            f"{train_text(r)}): {fmt(r['reason']) or '?'}"
        )
    if failed_runs or failed_evals:
        lines.append("")
    if incomplete or ctx.unreadable:
        lines += ["## Skipped", ""]
        lines += [f"- `{d}`: no {METRICS} (still running or killed)" for d in incomplete]
        lines += [f"- `{p}`: unreadable {METRICS}" for p in ctx.unreadable]
        lines.append("")

    lines += ["## Files", ""]
    lines += [f"- `{p.name}`" for p in files]
    lines += [""] + [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in files if p.suffix == ".png"]
    lines += ["", f"Regenerate with `{regenerate_command(ctx, out_dir)}`.", ""]
    return "\n".join(lines)
