"""Markdown: cell formats, labels of trained models and evaluations, tables, and the report itself."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..integrator import Integrator, fmt_h
from .chance import LEGEND, MARK, SMOKE_BANNER, cell_at_chance, label_mark, mark_cell
from .collect import METRICS, NO_METRICS, ReportContext, Row
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
    """The markdown report: a summary, accuracy tables, failures, skipped run dirs and the files written.

    ``sections`` (markdown lines each, e.g. from :func:`odenet.reports.registry.sections`) follow the table of
    accuracy at the training step size; their ``headlines`` (a :class:`~odenet.reports.registry.Section`'s) go
    into the summary. Models at chance are marked (:mod:`odenet.reports.chance`), smoke runs announced at the top.
    """
    rows, root = ctx.rows, ctx.root
    settings = setting_keys(rows)
    runs = group(rows, lambda r: r["run_dir"])
    failed_runs = [rs[0] for rs in runs.values() if rs[0]["status"] == "failed" and rs[0]["test_solver"] is None]
    n_failed = sum(1 for rs in runs.values() if all(r["status"] == "failed" for r in rs))
    incomplete = ctx.incomplete
    lines = ["# odenet report", ""]
    smoke = [d for d in runs if ctx.smoke(str(d))]
    if smoke:
        lines += [SMOKE_BANNER if len(smoke) == len(runs) else SMOKE_BANNER.replace(
            "Smoke runs:", f"Smoke runs ({len(smoke)} of {len(runs)}):"), ""]
    lines += summary_lines(ctx, sections)
    lines += [
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
    if any(r.get("beats_baseline") is False for r in rows) or any(cell_at_chance([r]) for r in rows if ok(r)):
        lines += [LEGEND, ""]

    models = group((r for r in rows if r["test_solver"] is not None), lambda r: model_key(r, settings))
    order = sorted(models, key=sort_key)

    def label(m: tuple[Any, ...]) -> str:
        return model_label(m, settings) + label_mark(ctx, (r["run_dir"] for r in models[m]))

    def accuracy(cell: Sequence[Row]) -> str:
        oks = [r for r in cell if ok(r)]
        return mark_cell(fmt_stats(stats(r["accuracy"] for r in oks)), cell_at_chance(oks))

    matched = [r for r in rows if r["test_solver"] is not None and (adaptive_eval(r) or at_train_step(r))]
    if matched:
        columns_ = sorted({matched_series(r) for r in matched}, key=lambda s: (s[0] != "fixed", s))
        cells = group(matched, lambda r: (model_key(r, settings), matched_series(r)))
        lines += ["## Accuracy at the training step size", ""]
        lines += md_table(
            ["trained model", *(name for _, name in columns_)],
            ([label(m)] + [accuracy(cells.get((m, c), [])) for c in columns_] for m in order),
        )

    for section in sections:
        lines += [*section, ""] if section and section[-1] != "" else list(section)

    lines += ["## All evaluations", ""]
    for m in order:
        lines += [f"### Trained with {label(m)}", ""]
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
                    accuracy(rs),
                    f"{len(oks)}/{len(rs)}",
                    f"{nfe.mean:.1f}" if nfe else "–",
                ]
            )
        lines += md_table(["test solver", "N", "h", "rtol", "atol", "accuracy", "seeds", "mean NFE"], body)

    lines += ["## Failures", ""]
    failed_evals = [r for r in rows if r["status"] == "failed" and r["test_solver"] is not None]
    if not failed_runs and not failed_evals and not incomplete:
        lines += ["None.", ""]
    for r in failed_runs:
        lines.append(f"- run `{r['run_dir']}` (seed {fmt(r['seed'])}, {train_text(r)}): {fmt(r['reason']) or '?'}")
    for r in failed_evals:
        lines.append(
            f"- evaluation {eval_label(eval_key(r))} of `{r['run_dir']}` (seed {fmt(r['seed'])}, "
            f"{train_text(r)}): {fmt(r['reason']) or '?'}"
        )
    if incomplete:
        lines.append(f"- {len(incomplete)} job folder(s) without {METRICS} ({NO_METRICS}): see Skipped.")
    if failed_runs or failed_evals or incomplete:
        lines.append("")
    if incomplete or ctx.unreadable:
        lines += ["## Skipped", ""]
        lines += [f"- `{d}`: no {METRICS} ({NO_METRICS})" for d in incomplete]
        lines += [f"- `{p}`: unreadable {METRICS}" for p in ctx.unreadable]
        lines.append("")

    lines += ["## Files", ""]
    lines += [f"- `{p.name}`" for p in files]
    lines += [""] + [f"![{p.stem.replace('_', ' ')}]({p.name})" for p in files if p.suffix == ".png"]
    lines += ["", f"Regenerate with `{regenerate_command(ctx, out_dir)}`.", ""]
    return "\n".join(lines)


def best_model(ctx: ReportContext) -> str | None:
    """The trained model with the highest mean test accuracy under its training solver (the lowest test loss
    when no run has an accuracy), with its seeds and its majority-class baseline; None without such evaluations."""
    settings = setting_keys(ctx.rows)
    own = [r for r in ctx.rows if r["is_train_solver"] and r["status"] == "ok" and r["test_solver"] is not None]
    metric = "accuracy" if any(r["accuracy"] is not None for r in own) else "loss"
    models = group((r for r in own if r[metric] is not None), lambda r: model_key(r, settings))
    if not models:
        return None
    means = {m: stats(r[metric] for r in rs) for m, rs in models.items()}
    pick = (max if metric == "accuracy" else min)(
        (m for m in models if means[m] is not None), key=lambda m: (means[m].mean, sort_key(m)))  # type: ignore[union-attr]
    rs, s = models[pick], means[pick]
    seeds = f"{s.n} seed{'s' if s.n > 1 else ''}"  # type: ignore[union-attr]
    if metric == "loss":
        return f"Best model (lowest test loss under its training solver): {model_label(pick, settings)}, loss " \
               f"{fmt_stats(s)} ({seeds})."
    base = stats(r.get("baseline_accuracy") for r in rs)
    text = f"{fmt_stats(s)}" + (f" {MARK}" if cell_at_chance(rs) else "")
    baseline = f"; majority-class baseline {base.mean:.4f}" if base is not None else ""
    baseline += "; smoke" if all(r.get("smoke") for r in rs) else ""
    return (f"Best model (accuracy under its training solver): {model_label(pick, settings)}, {text} "
            f"({seeds}{baseline}).")


def summary_lines(ctx: ReportContext, sections: Sequence[Sequence[str]] = ()) -> list[str]:
    """The report's opening lines: runs ok / failed / at chance / smoke, the best model, and the sections'
    headlines (their conclusions, or that they are withheld)."""
    dirs = list(dict.fromkeys(r["run_dir"] for r in ctx.rows))
    statuses = {d: (ctx.run(d).metrics or {}).get("status") for d in dirs}
    n_ok = sum(1 for v in statuses.values() if v == "ok")
    chance = ctx.at_chance(dirs)
    smoke = [d for d in dirs if ctx.smoke(d)]
    runs = f"{len(dirs)} run{'s' if len(dirs) != 1 else ''}"
    counts = f"{runs}: {n_ok} ok, {len(dirs) - n_ok} failed, {len(chance)} at chance"
    counts += f" {MARK}" if chance else ""
    counts += f", {len(smoke)} smoke"
    if ctx.incomplete:
        counts += f"; {len(ctx.incomplete)} job folder(s) without {METRICS} (failed or unfinished)"
    if ctx.unreadable:
        counts += f"; {len(ctx.unreadable)} unreadable {METRICS}"
    items = [counts + "."]
    best = best_model(ctx)
    if best:
        items.append(best)
    for section in sections:
        items += getattr(section, "headlines", [])
    return ["## Summary", "", *(f"- {item}" for item in items), ""]
