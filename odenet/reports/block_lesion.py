"""Report section and plot for the ``block_lesion`` experiment (Veit et al. 2016): do residual nets degrade
smoothly when blocks are deleted, while plain nets collapse, and do their blocks share the work evenly?

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json["analysis"]["lesion"]``
(:func:`odenet.runner.measure._lesion`: test accuracy intact, after deleting each block alone and after deleting
``k`` random blocks; the relative update ``||x_{k+1} - x_k|| / ||x_k||`` per block and its evenness) and return
``None`` when no run has it. Models are grouped by arm — plain, residual at h = 1 (a standard ResNet, T = N),
residual at h = 1/N (the ODE regime, T = 1) — and depth N.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from .chance import label_mark, mark_cell, value_at_chance, withheld_section
from .collect import ReportContext, beats_baseline
from .markdown import md_table
from .registry import register_plot, register_section
from .runs import Run, ok_runs
from .stats import mean_std

#: Columns of random lesions: the fraction k / N of blocks deleted.
FRACTIONS = (1 / 8, 1 / 4, 1 / 2)
ARMS = ("plain", "residual, h = 1", "residual, h = 1/N")

Groups = dict[str, dict[str, dict[int, list[Run]]]]  # data set -> arm -> N -> runs


def arm(run: Run, lesion: dict[str, Any]) -> str:
    """``plain``, ``residual, h = 1``, ``residual, h = 1/N`` (or ``residual, h = 0.5``)."""
    if run.train.get("block") == "plain":
        return "plain"
    h, n = float(lesion["step_size"]), int(lesion["steps"])
    if math.isclose(h, 1.0, rel_tol=1e-9):
        return "residual, h = 1"
    if math.isclose(h, 1.0 / n, rel_tol=1e-9):
        return "residual, h = 1/N"
    return f"{run.train.get('block')}, h = {h:g}"


def _groups(ctx: ReportContext) -> Groups | None:
    out: Groups = {}
    for m in ok_runs(ctx):
        les = m.analysis("lesion")
        if les is None:
            continue
        out.setdefault(m.data, {}).setdefault(arm(m, les), {}).setdefault(int(les["steps"]), []).append(m)
    return out or None


def _arm_order(name: str) -> tuple[int, str]:
    return (ARMS.index(name) if name in ARMS else len(ARMS), name)


def _les(m: Run) -> dict[str, Any]:
    return m.analysis("lesion") or {}


def single_drops(les: dict[str, Any]) -> list[float]:
    """Accuracy lost by deleting each block alone (intact minus lesioned), one value per block."""
    return [les["intact_accuracy"] - a for a in les["single"]]


def random_at(les: dict[str, Any], fraction: float) -> float | None:
    """Mean accuracy over the draws that deleted ``k = fraction N`` blocks (None when k was not drawn)."""
    k = fraction * int(les["steps"])
    for kk, accs in zip(les["random_k"], les["random"]):
        if math.isclose(kk, k):
            return statistics.fmean(accs)
    return None


def chance_fraction(les: dict[str, Any], baseline: float | None) -> float | None:
    """The fraction of single-block lesions that leave the model at chance (not above baseline + margin)."""
    if baseline is None:
        return None
    return statistics.fmean(0.0 if beats_baseline(a, baseline) else 1.0 for a in les["single"])


def _cells(runs: Sequence[Run], get: Callable[[Run], float | None], fmt: str = "{:.4f}") -> str:
    return mean_std([get(m) for m in runs], fmt)


def _lesion_table(ctx: ReportContext, by: dict[str, dict[int, list[Run]]]) -> list[str]:
    header = ["model", "N", "intact acc.", "mean single-lesion drop", "worst single-lesion drop",
              "single lesions at chance"] + [f"acc., {k} of blocks deleted" for k in ("1/8", "1/4", "1/2")]
    body = []
    for a in sorted(by, key=_arm_order):
        for n, runs in sorted(by[a].items()):
            intact = [_les(m)["intact_accuracy"] for m in runs]
            row = [a + label_mark(ctx, [m.run_dir for m in runs]), str(n),
                   mark_cell(mean_std(intact), value_at_chance(intact, [m.baseline for m in runs])),
                   _cells(runs, lambda m: statistics.fmean(single_drops(_les(m)))),
                   _cells(runs, lambda m: max(single_drops(_les(m)))),
                   _cells(runs, lambda m: chance_fraction(_les(m), m.baseline), "{:.2f}")]
            row += [_cells(runs, lambda m, f=f: random_at(_les(m), f)) for f in FRACTIONS]
            body.append(row)
    return md_table(header, body)


def _init(m: Run) -> dict[str, Any]:
    return m.analysis("lesion_init") or {}


def _update_table(by: dict[str, dict[int, list[Run]]]) -> list[str]:
    header = ["model", "N", "mean relative update", "first block", "last block", "evenness (entropy)",
              "coeff. of variation", "smallest share × N", "at init: coeff. of variation",
              "at init: smallest share × N"]
    body = []
    for a in sorted(by, key=_arm_order):
        for n, runs in sorted(by[a].items()):
            body.append([a, str(n), _cells(runs, lambda m: statistics.fmean(_les(m)["relative_update"])),
                         _cells(runs, lambda m: _les(m)["relative_update"][0]),
                         _cells(runs, lambda m: _les(m)["relative_update"][-1]),
                         _cells(runs, lambda m: _les(m)["evenness_entropy"], "{:.3f}"),
                         _cells(runs, lambda m: _les(m)["evenness_cv"], "{:.3f}"),
                         _cells(runs, lambda m: _les(m)["evenness_min_share"], "{:.3f}"),
                         _cells(runs, lambda m: _init(m).get("evenness_cv"), "{:.3f}"),
                         _cells(runs, lambda m: _init(m).get("evenness_min_share"), "{:.3f}")])
    return md_table(header, body)


@register_section("block_lesion")
def block_lesion_section(ctx: ReportContext) -> list[str] | None:
    """Accuracy after single and random block lesions, and the per-block relative update, per arm and depth."""
    groups = _groups(ctx)
    if groups is None:
        return None
    lines = ["## Block lesions (Veit et al. 2016)", ""]
    seeds = max(len(r) for by in groups.values() for d in by.values() for r in d.values())
    split = {_les(m).get("split") for by in groups.values() for d in by.values() for r in d.values() for m in r}
    lines += [
        f"Deleting block k sets x_(k+1) = x_k. Accuracy on the {'/'.join(sorted(map(str, split)))} set: intact; "
        "the drop when one block is deleted (mean and worst over the N blocks); the fraction of single lesions "
        "that leave the model at chance; after deleting k random blocks (mean over the draws). Relative update: "
        "||x_(k+1) - x_k|| / ||x_k|| (mean over the analysis points, the first training examples), its normalised "
        "entropy over blocks (1 = even), coefficient of variation (0 = even) and smallest share × N (1 = even, "
        "0 = an idle block), after training and at initialisation (the control). "
        f"Mean ± sample std over up to {seeds} seeds.",
        "",
    ]
    controls: list[str] = []
    for data, by in sorted(groups.items()):
        if len(groups) > 1:
            lines += [f"### {data}", ""]
        lines += [*_lesion_table(ctx, by), "", *_update_table(by), ""]
        # The comparison rests on intact models that learned: every residual net, and the shallowest plain net
        # (deeper plain nets at chance are the degradation problem, marked †; their lesions show nothing).
        controls += [m.run_dir for a, d in by.items() for n, r in d.items() for m in r
                     if a != "plain" or n == min(d)]
    return withheld_section(ctx, lines, "Block lesions: residual vs plain", controls)


def _mean_curve(runs: Sequence[Run], get: Callable[[dict[str, Any]], Sequence[float]]) -> list[float]:
    curves = [list(get(_les(m))) for m in runs]
    return [statistics.fmean(c[i] for c in curves) for i in range(min(len(c) for c in curves))]


@register_plot("block_lesion.png")
def block_lesion_plot(ctx: ReportContext) -> Figure | None:
    """One row per arm (of the first data set): accuracy vs the deleted block, accuracy vs the fraction of random
    blocks deleted, relative update per block; one line per depth N (mean over seeds)."""
    groups = _groups(ctx)
    if groups is None:
        return None
    data = sorted(groups)[0]
    by = groups[data]
    arms = sorted(by, key=_arm_order)
    depths = sorted({n for d in by.values() for n in d})
    cmap = colormaps["viridis"]
    color = {n: cmap(i / max(1, len(depths) - 1) * 0.85) for i, n in enumerate(depths)}
    fig = Figure(figsize=(13, 3.3 * len(arms) + 0.6), layout="constrained")
    axes = fig.subplots(len(arms), 3, squeeze=False)
    for row, a in zip(axes, arms):
        ax_single, ax_rand, ax_rel = row
        for n, runs in sorted(by[a].items()):
            pos = [(k + 0.5) / n for k in range(n)]
            kw = {"color": color[n], "label": f"N = {n}"}
            ax_single.plot(pos, _mean_curve(runs, lambda les: les["single"]), marker=".", markersize=3, **kw)
            intact = statistics.fmean(_les(m)["intact_accuracy"] for m in runs)
            ax_single.axhline(intact, color=color[n], linestyle=":", linewidth=0.8)
            ks = _les(runs[0])["random_k"]
            means = _mean_curve(runs, lambda les: [statistics.fmean(r) for r in les["random"]])
            ax_rand.plot([0.0] + [k / n for k in ks], [intact] + means, marker="o", markersize=3, **kw)
            ax_rel.plot(pos, _mean_curve(runs, lambda les: les["relative_update"]), marker=".", markersize=3, **kw)
            if all(_init(m) for m in runs):
                init = [statistics.fmean(_init(m)["relative_update"][k] for m in runs) for k in range(n)]
                ax_rel.plot(pos, init, color=color[n], linestyle="--", linewidth=0.8)
        baselines = [m.baseline for d in by[a].values() for m in d if m.baseline is not None]
        for ax in (ax_single, ax_rand):
            if baselines:
                ax.axhline(statistics.fmean(baselines), color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylim(0, 1.02)
            ax.set_ylabel("test accuracy")
            ax.grid(True, alpha=0.3)
        ax_single.set_title(f"{a}: delete one block (dotted: intact)", fontsize=9)
        ax_single.set_xlabel("position of the deleted block, (k + ½) / N")
        ax_rand.set_title(f"{a}: delete k random blocks (dashed: chance)", fontsize=9)
        ax_rand.set_xlabel("fraction of blocks deleted, k / N")
        ax_rel.set_title(f"{a}: relative update per block (dashed: at init)", fontsize=9)
        ax_rel.set_xlabel("block position, (k + ½) / N")
        ax_rel.set_ylabel("||x_(k+1) - x_k|| / ||x_k||")
        ax_rel.set_yscale("log")
        ax_rel.grid(True, alpha=0.3)
        ax_rel.legend(fontsize=7)
    fig.suptitle(f"Block lesions on {data}: mean over seeds")
    return fig
