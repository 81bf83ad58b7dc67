"""Report section and plot for the ``depth_smoothness`` experiment (Sander et al. 2022, Cohen et al. 2021): are
trained untied weights smooth in depth?

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json`` (``analysis.depth``,
written by ``odenet.runner.measure``) and ``config.yaml`` (field, data and initialisation: the task), and
return ``None`` when no run has the measurement.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..analysis.depth import loglog_slope
from .chance import label_mark, withheld_line, withhold
from .collect import ReportContext
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import Run, ok_runs
from .stats import mean_std, paired, paired_text


def _depth_data(ctx: ReportContext) -> dict[str, dict[int, list[dict[str, Any]]]] | None:
    """task -> depth L -> the runs' ``analysis.depth`` (each with its ``run_dir`` and ``seed`` added)."""
    by: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for m in ok_runs(ctx):
        d = m.analysis("depth")
        if d is None:
            continue
        by.setdefault(_task_name(m), {}).setdefault(int(d["layers"]), []).append(
            {**d, "run_dir": m.run_dir, "seed": m.seed})
    return by or None


def _task_name(run: Run) -> str:
    try:
        cfg = run.cfg
        f = cfg.field
        init = "zero init" if f.get("zero_init") else "tied init" if f.get("tied_init") else "i.i.d. init"
        return f"{cfg.field.kind} field on {cfg.data.name} ({init})"
    except Exception:
        return "?"


def _fit(ls: list[int], values: list[float]) -> str:
    pairs = [(x, v) for x, v in zip(ls, values) if v > 0]
    if len(pairs) < 2:
        return "–"
    f = loglog_slope([p[0] for p in pairs], [p[1] for p in pairs])
    return f"{f.slope:.3f} (R² {f.r2:.3f})"


def seed_slopes(d: dict[int, list[dict[str, Any]]], key: str) -> dict[Any, float]:
    """seed -> the log-log slope in L of ``key`` (``max`` or ``rss``), every seed fitted over the same depths: those
    where all seeds of the task have a positive value (at least 2; else no slope)."""
    per: dict[Any, dict[int, float]] = {}
    for n, xs in d.items():
        for x in xs:
            if x[key] > 0:
                per.setdefault(x["seed"], {})[n] = float(x[key])
    seeds = {x["seed"] for xs in d.values() for x in xs}
    common = sorted(set.intersection(*(set(per.get(seed, {})) for seed in seeds))) if seeds else []
    if len(common) < 2:
        return {}
    return {seed: loglog_slope(common, [values[n] for n in common]).slope for seed, values in per.items()}


IID = "i.i.d. init"


def _paired_lines(by: dict[str, dict[int, list[dict[str, Any]]]]) -> list[str]:
    """Each task's per-seed slope of the max increment minus that of the same field on the same data with i.i.d.
    init (paired by seed); tasks without such a reference are not compared."""
    body = []
    for t in sorted(by):
        field_data, _, init = t.rpartition(" (")
        ref = f"{field_data} ({IID})"
        if not field_data or init == f"{IID})" or ref not in by:
            continue
        d = paired(seed_slopes(by[t], "max"), seed_slopes(by[ref], "max"))
        body.append([t, paired_text(d, "{:+.3f}"), str(len(d))])
    if not body:
        return []
    return ["Paired by seed: slope of the max increment minus that of the same field and data with i.i.d. init "
            "(mean ± sample std over seeds).", "",
            *md_table(["task", "slope − slope with i.i.d. init", "seeds"], body)]


@register_section("depth_smoothness")
def depth_section(ctx: ReportContext) -> list[str] | None:
    """Max and RSS of the per-step weight increments against depth L, per task (mean ± std over seeds), with
    their log-log slopes per seed and of the seed means."""
    by = _depth_data(ctx)
    if by is None:
        return None
    lines = [
        "## Smoothness in depth",
        "",
        "θ_k: all parameters of step k flattened; max and RSS of ‖θ_{k+1} − θ_k‖ over k (mean ± sample std over "
        "seeds); slope: least-squares fit of log(value) against log L (−1: smooth limit, 0: no limit, "
        "Cohen et al.), fitted per seed (mean ± std over seeds) and to the seed means (with its R²).",
        "",
    ]
    headlines = []
    for task, d in sorted(by.items()):
        ls = sorted(d)
        maxes = [statistics.fmean(x["max"] for x in d[n]) for n in ls]
        rss = [statistics.fmean(x["rss"] for x in d[n]) for n in ls]
        lines += [f"### {task}", ""]
        lines += md_table(["L", "seeds", "max increment", "RSS of increments"],
                          [[str(n) + label_mark(ctx, [x["run_dir"] for x in d[n]]), str(len(d[n])),
                            mean_std([x["max"] for x in d[n]], "{:.4g}"), mean_std([x["rss"] for x in d[n]], "{:.4g}")]
                           for n in ls])  # fmt: skip
        withheld = withhold(ctx, [x["run_dir"] for n in ls for x in d[n]])
        if withheld is not None:
            text = withheld_line(f"Log-log slope in L ({task})", withheld)
        else:
            per_max, per_rss = seed_slopes(d, "max"), seed_slopes(d, "rss")
            seeds = ", ".join(f"{v:.3f}" for _, v in sorted(per_max.items(), key=lambda kv: str(kv[0])))
            text = (f"Log-log slope in L ({task}): max increment {mean_std(per_max.values(), '{:.3f}')} over "
                    f"{len(per_max)} seed(s) ({seeds}), of the means {_fit(ls, maxes)}; RSS "
                    f"{mean_std(per_rss.values(), '{:.3f}')}, of the means {_fit(ls, rss)}.")
        lines += [text, ""]
        if len(ls) > 1:
            headlines.append(text)
    lines += _paired_lines(by)
    return Section(lines, headlines)


@register_plot("depth_smoothness.png")
def depth_plot(ctx: ReportContext) -> Figure | None:
    """Max and RSS of the increments against depth L (log-log), with the fitted slopes."""
    by = _depth_data(ctx)
    if by is None or not any(len(d) > 1 for d in by.values()):
        return None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    for i, (task, d) in enumerate(sorted(by.items())):
        ls = sorted(d)
        for ax, key in zip(axes, ("max", "rss")):
            ys = [statistics.fmean(x[key] for x in d[n]) for n in ls]
            ax.plot(ls, ys, marker="o", color=cmap(i), linestyle="none", label=task)
            pairs = [(x, y) for x, y in zip(ls, ys) if y > 0]
            if len(pairs) >= 2:
                f = loglog_slope([p[0] for p in pairs], [p[1] for p in pairs])
                xs = np.asarray([p[0] for p in pairs], dtype=float)
                ax.plot(xs, np.exp(f.intercept) * xs**f.slope, color=cmap(i), linestyle="--",
                        label=f"fit: slope {f.slope:.2f}")
    for ax, title in zip(axes, ("max_k ‖θ_{k+1} − θ_k‖", "sqrt(Σ_k ‖θ_{k+1} − θ_k‖²)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L (number of steps, h = 1/L; log₂ scale)")
        ax.set_ylabel(f"{title} (log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Smoothness in depth of trained untied ResNets: increments of the per-step weights vs depth")
    return fig
