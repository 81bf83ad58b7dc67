"""Report section and plot for the ``degradation`` experiment (He et al. 2016): do deeper plain nets train worse
while residual ones do not?

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json`` (its ``train``
description: block, steps, final training loss; the evaluation under the training solver) and return ``None``
unless the sweep holds plain and residual stacks at two or more depths each (classification).
"""

from __future__ import annotations

import statistics

from matplotlib.figure import Figure

from .chance import label_mark, mark_cell, value_at_chance, withheld_line, withhold
from .collect import ReportContext
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import BLOCK_COLORS, Run, ok_runs
from .stats import mean_std


def _stack_runs(ctx: ReportContext) -> list[Run]:
    return [m for m in ok_runs(ctx) if m.train.get("block") in ("plain", "residual") and m.train.get("steps")]


def _degradation_data(ctx: ReportContext) -> dict[str, dict[int, list[Run]]] | None:
    runs = [m for m in _stack_runs(ctx) if m.metrics.get("task", "classification") == "classification"]
    by: dict[str, dict[int, list[Run]]] = {}
    for m in runs:
        by.setdefault(m.train["block"], {}).setdefault(int(m.train["steps"]), []).append(m)
    if len(by) < 2 or not all(len(d) > 1 for d in by.values()):
        return None
    if any(len({m.train.get("step_size") for m in ms}) > 1 for d in by.values() for ms in d.values()):
        return None  # two step sizes at one depth (e.g. block_lesion's h = 1 and h = 1/N arms): not one curve each
    return by


@register_section("degradation")
def degradation_section(ctx: ReportContext) -> list[str] | None:
    """Final training loss (whole training set) and test accuracy against depth, plain vs residual."""
    by = _degradation_data(ctx)
    if by is None:
        return None
    depths = sorted({n for d in by.values() for n in d})
    blocks = [b for b in ("plain", "residual") if b in by]
    header = ["depth N"] + [f"{b}: train loss" for b in blocks] + [f"{b}: test acc." for b in blocks]
    body = []
    for n in depths:
        cells = [str(n) + label_mark(ctx, [m.run_dir for b in blocks for m in by[b].get(n, [])])]
        cells += [mean_std([m.train.get("train_loss") for m in by[b].get(n, [])]) for b in blocks]
        for b in blocks:
            ms = by[b].get(n, [])
            acc = [m.train_eval().get("accuracy") for m in ms]
            cells.append(mark_cell(mean_std(acc), value_at_chance(acc, [m.baseline for m in ms])))
        body.append(cells)
    seeds = max(len(v) for d in by.values() for v in d.values())
    lines = [
        "## Degradation (plain vs residual)",
        "",
        f"Training loss: mean cross-entropy of the final model on the whole training set; test accuracy under "
        f"the training solver. Mean ± sample std over up to {seeds} seeds.",
        "",
        *md_table(header, body),
    ]
    # The comparison rests on the controls: every residual net and the shallowest plain net must have trained
    # (a deeper plain net at chance is what degradation looks like at its worst).
    controls = [m.run_dir for b, d in by.items() for n, ms in d.items() for m in ms if b != "plain" or n == min(d)]
    withheld = withhold(ctx, controls)
    if withheld is None:
        return lines
    text = withheld_line("Degradation: plain vs residual in depth", withheld)
    return Section([*lines, text, ""], [text])


@register_plot("degradation.png")
def degradation_plot(ctx: ReportContext) -> Figure | None:
    """Final training loss and test accuracy against depth, one line per block kind, dots for single seeds."""
    by = _degradation_data(ctx)
    if by is None:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for b, d in sorted(by.items()):
        ns = sorted(d)
        getters = ((ax_loss, lambda m: m.train.get("train_loss")), (ax_acc, lambda m: m.train_eval().get("accuracy")))
        for ax, get in getters:
            vals = [[get(m) for m in d[n] if get(m) is not None] for n in ns]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            ax.plot(ns, means, marker="o", color=BLOCK_COLORS.get(b), label=f"{b} (mean)")
            for n, v in zip(ns, vals):
                ax.scatter([n] * len(v), v, color=BLOCK_COLORS.get(b), s=12, alpha=0.4)
    for ax in (ax_loss, ax_acc):
        depths = sorted({n for d in by.values() for n in d})
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(n) for n in depths])
        ax.set_xlabel("depth N (number of blocks, log₂ scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="dots: single seeds", fontsize=8, title_fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("final training loss (cross-entropy, log scale)")
    ax_loss.set_title("Training loss vs depth")
    ax_acc.set_ylabel("test accuracy (fraction correct)")
    ax_acc.set_title("Test accuracy vs depth")
    fig.suptitle("Degradation: plain vs residual nets on the same field family, same budget")
    return fig
