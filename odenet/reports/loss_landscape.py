"""Report section and plots for the ``loss_landscape`` experiment (Li et al. 2018): filter-normalised slices of the
training loss and Hessian sharpness, plain vs residual vs ODE, across step sizes.

Registered when :mod:`odenet.reports` is imported. They read each run's ``metrics.json`` (``analysis.landscape``,
``analysis.sharpness`` and ``analysis.interpolation``, written by ``odenet.runner.measure``) and return ``None``
when no run has them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .chance import label_mark, mark_cell, value_at_chance, withheld_section
from .collect import ReportContext
from .markdown import md_table
from .registry import register_plot, register_section
from .runs import Run, by_train_label, ok_runs
from .stats import mean_std, paired, paired_text


def _landscape_runs(ctx: ReportContext) -> dict[str, list[Run]] | None:
    runs = [m for m in ok_runs(ctx) if m.analysis("landscape") or m.analysis("sharpness")]
    return by_train_label(runs) if runs else None


@register_section("loss_landscape")
def loss_landscape_section(ctx: ReportContext) -> list[str] | None:
    """Sharpness (top eigenvalue, trace) and the 1D / 2D slices' summaries per model."""
    groups = _landscape_runs(ctx)
    if groups is None:
        return None
    body = []
    for label, ms in groups.items():
        sharp = [m.analysis("sharpness") or {} for m in ms]
        land = [m.analysis("landscape") for m in ms]
        centre = [s["slice_1d"][len(s["slice_1d"]) // 2] for s in land if s]
        edges = [max(s["slice_1d"][0], s["slice_1d"][-1]) for s in land if s]
        rough = [roughness(s) for s in land if s]
        acc = [m.train_eval().get("accuracy") for m in ms]
        body.append([
            label + label_mark(ctx, [m.run_dir for m in ms]), str(len(ms)),
            mean_std([m.train.get("train_loss") for m in ms]),
            mark_cell(mean_std(acc), value_at_chance(acc, [m.baseline for m in ms])),
            mean_std([s.get("top_eigenvalue") for s in sharp], "{:.4g}"),
            ", ".join("yes" if s.get("converged") else "no" for s in sharp),
            mean_std([s.get("trace") for s in sharp], "{:.4g}"),
            mean_std([s.get("trace_stderr") for s in sharp], "{:.2g}"),
            mean_std(centre, "{:.4g}"), mean_std(edges, "{:.4g}"), mean_std(rough, "{:.3g}"),
        ])
    lines = [
        "## Loss landscape and sharpness",
        "",
        "Top Hessian eigenvalue (power iteration on Hessian-vector products) and Hessian trace (Hutchinson, "
        "Rademacher probes, with its standard error) of the training loss on the analysis batch; 1D slice: "
        "filter-normalised random direction, loss at the centre and the larger of the two ends (±span); "
        "2D extra minima: local minima of the 2D slice (lower than their 4 grid neighbours) besides one: "
        "0 for a convex bowl, many for a chaotic landscape.",
        "",
        *md_table(
            ["model", "runs", "train loss", "test acc.", "top eigenvalue", "converged", "trace", "trace s.e.",
             "1D: loss at 0", "1D: loss at ±span", "2D extra minima"],
            body,
        ),
        *paired_lines(groups),
    ]
    return withheld_section(ctx, lines, "Smoothness and sharpness compared across models",
                            [m.run_dir for ms in groups.values() for m in ms])


def _by_seed(ms: list[Run], value: Any) -> dict[Any, float | None]:
    """seed -> ``value(run)``."""
    return {m.seed: value(m) for m in ms}


def _top(m: Run) -> float | None:
    return (m.analysis("sharpness") or {}).get("top_eigenvalue")


def _trace(m: Run) -> float | None:
    return (m.analysis("sharpness") or {}).get("trace")


def paired_lines(groups: dict[str, list[Run]]) -> list[str]:
    """Every model against the residual net with the largest step (fewest steps), paired by seed: differences of
    the top eigenvalue and the trace, and the ratio of top eigenvalues."""
    ref = next((label for label, ms in groups.items() if ms[0].train.get("block") == "residual"), None)
    if ref is None or len(groups) < 2:
        return []
    top_ref, trace_ref = _by_seed(groups[ref], _top), _by_seed(groups[ref], _trace)
    body = []
    for label, ms in groups.items():
        if label == ref:
            continue
        top = _by_seed(ms, _top)
        d_top = paired(top, top_ref)
        ratio = [t / top_ref[s] for s, t in top.items() if t is not None and top_ref.get(s)]
        body.append([label, str(len(d_top)), paired_text(d_top, "{:+.4g}"), mean_std(ratio, "{:.3g}"),
                     paired_text(paired(_by_seed(ms, _trace), trace_ref), "{:+.4g}")])
    return [f"Paired by seed against {ref}: model minus reference (mean ± sample std over seeds, and on how many "
            "seeds it is positive), and the ratio of top eigenvalues.", "",
            *md_table(["model", "seeds", f"top eigenvalue − {ref}", f"top eigenvalue / {ref}",
                       f"trace − {ref}"], body)]


def roughness(land: dict[str, Any]) -> float:
    """Local minima of the 2D slice (grid points lower than their 4 neighbours, edges excluded) besides the
    lowest one: 0 for a convex bowl; Li et al.'s chaotic landscapes have many."""
    z = np.asarray(land["slice_2d"], dtype=float)
    if z.shape[0] < 3:
        return float("nan")
    c = z[1:-1, 1:-1]
    minima = (c < z[:-2, 1:-1]) & (c < z[2:, 1:-1]) & (c < z[1:-1, :-2]) & (c < z[1:-1, 2:])
    return float(max(int(minima.sum()) - 1, 0))


@register_plot("landscape_2d.png")
def landscape_2d_plot(ctx: ReportContext) -> Figure | None:
    """The 2D slice of the first seed of each model, on one shared log scale."""
    groups = _landscape_runs(ctx)
    if groups is None:
        return None
    items = [(label, ms[0].analysis("landscape")) for label, ms in groups.items()]
    items = [(label, land) for label, land in items if land]
    if not items:
        return None
    cols = min(3, len(items))
    nrows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(4.4 * cols + 1.2, 4.0 * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, cols, squeeze=False).flat)
    all_z = np.concatenate([np.log10(np.asarray(land["slice_2d"], dtype=float)).ravel() for _, land in items])
    levels = np.linspace(np.nanmin(all_z), min(np.nanmax(all_z), np.nanmin(all_z) + 4), 21)
    mappable = None
    for ax, (label, land) in zip(axes, items):
        axis = np.asarray(land["axis"], dtype=float)
        z = np.log10(np.asarray(land["slice_2d"], dtype=float))
        mappable = ax.contourf(axis, axis, z.T, levels=levels, cmap=colormaps["viridis"], extend="max")
        ax.contour(axis, axis, z.T, levels=levels, colors="k", linewidths=0.3)
        ax.plot([0], [0], marker="*", color="white", markersize=10, markeredgecolor="black")
        ax.set_title(f"{label} (seed {groups[label][0].seed})", fontsize=10)
        ax.set_xlabel("α (direction 1, filter-normalised)")
        ax.set_ylabel("β (direction 2)")
        ax.set_aspect("equal")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[: len(items)], label="log₁₀ training loss (shared scale, capped at +4 decades)")
    fig.suptitle("Loss landscape: 2D filter-normalised random slices around the trained weights (★)")
    return fig


@register_plot("landscape_1d.png")
def landscape_1d_plot(ctx: ReportContext) -> Figure | None:
    """1D slices (one line per seed) and the linear interpolation from init to the trained weights."""
    groups = _landscape_runs(ctx)
    if groups is None:
        return None
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax, ax_i = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    drawn = False
    for i, (label, ms) in enumerate(groups.items()):
        inter = ms[0].analysis("interpolation")
        if inter:
            ax_i.plot(inter["alphas"], inter["losses"], color=cmap(i % 10), label=label, marker="o", markersize=3)
    if ax_i.lines:
        ax_i.set_yscale("log")
        ax_i.axvline(0, color="grey", linewidth=0.8)
        ax_i.axvline(1, color="grey", linewidth=0.8)
        ax_i.set_xlabel("a: weights (1 − a) θ_init + a θ_trained (0 = init, 1 = trained)")
        ax_i.set_ylabel("training loss (cross-entropy, log scale)")
        ax_i.grid(True, alpha=0.3)
        ax_i.set_title("Linear interpolation from init to the trained weights")
    else:
        ax_i.set_visible(False)
    for i, (label, ms) in enumerate(groups.items()):
        for j, m in enumerate(ms):
            land = m.analysis("landscape")
            if land:
                ax.plot(land["alphas"], land["slice_1d"], color=cmap(i % 10), alpha=1.0 if j == 0 else 0.4,
                        label=label if j == 0 else None, marker="o", markersize=3)
                drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    ax.set_xlabel("α (filter-normalised random direction; 0 = trained weights)")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="model", fontsize=8)
    ax.set_title("1D filter-normalised random slices (one line per seed)")
    return fig
