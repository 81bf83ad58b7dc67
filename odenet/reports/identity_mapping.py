"""Report section and plot for the ``identity_mapping`` experiment: can a stack of non-linear layers represent
``y = x`` (plain ``x <- F_k(x)`` vs residual ``x <- x + F_k(x)``), and how much of its input does a ReLU layer lose
at low width (Sandler et al. 2018)?

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json``: the training MSE
(``train.train_loss``; the task's inputs have unit mean variance, so it is the fraction of the input's variance
not reproduced) and ``analysis.identity`` / ``analysis.identity_init`` (written by ``analysis.identity``); they
return ``None`` unless the sweep holds plain and residual stacks at two or more depths with that measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from ..analysis import low_rank_error
from .collect import ReportContext
from .figures import legend_union, log2_xticks, stats_line
from .markdown import md_table
from .registry import register_plot, register_section
from .runs import BLOCK_COLORS, Run, ok_runs, run_dataset
from .stats import mean_std, stats

#: (data label, activation, hidden width) -> block -> depth N -> runs
Grid = dict[tuple[str, str, int], dict[str, dict[int, list[Run]]]]

ACT_STYLES = {"relu": "-", "tanh": "--", "linear": ":"}


def data_label(run: Run) -> str:
    """``digits (d=64)``, ``Gaussian (d=16)``: the identity task's inputs and their dimension."""
    d = (run.analysis("identity") or {}).get("dim")
    name = {"digits_identity": "digits", "linear_regression": "Gaussian"}.get(str(run.cfg.data.name),
                                                                             str(run.cfg.data.name))
    return f"{name} (d={d})"


def _identity_runs(ctx: ReportContext) -> list[Run]:
    return [m for m in ok_runs(ctx) if m.metrics.get("task") == "regression" and m.analysis("identity")
            and m.train.get("block") in ("plain", "residual") and m.train.get("steps")]


def identity_grid(ctx: ReportContext) -> Grid | None:
    """The runs by (data, activation, width), block and depth; None without both blocks at two depths."""
    grid: Grid = {}
    for m in _identity_runs(ctx):
        key = (data_label(m), str(m.cfg.field.activation), int(m.cfg.field.hidden))
        grid.setdefault(key, {}).setdefault(m.train["block"], {}).setdefault(int(m.train["steps"]), []).append(m)
    if not any(len(by) == 2 and all(len(d) > 1 for d in by.values()) for by in grid.values()):
        return None
    return grid


def random_layers(ctx: ReportContext) -> dict[str, list[dict[str, Any]]]:
    """Data label -> one ``random_layers`` record per seed (every job of a seed measures the same layers)."""
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    for m in _identity_runs(ctx):
        rec = (m.analysis("identity") or {}).get("random_layers")
        if rec:
            out.setdefault(data_label(m), {}).setdefault(m.seed, rec)
    return {k: list(v.values()) for k, v in sorted(out.items())}


def bottleneck_bound(ctx: ReportContext, by: dict[str, dict[int, list[Run]]], width: int) -> float | None:
    """The least training MSE a plain stack of hidden width ``width`` can reach at any depth (its outputs lie in a
    ``width``-dimensional affine subspace: :func:`~odenet.analysis.low_rank_error` of the training inputs)."""
    run = next((m for d in by.values() for ms in d.values() for m in ms), None)
    if run is None:
        return None
    x = run_dataset(ctx, run).x_train
    x = x.reshape(len(x), -1)
    return ctx.cached(("low_rank_error", data_label(run), width), lambda: low_rank_error(x, width))


def _get(m: Run, key: str, phase: str = "identity") -> float | None:
    value = (m.analysis(phase) or {}).get(key)
    return None if value is None else float(value)


def _floored_r2(m: Run) -> float | None:
    r2 = _get(m, "r2")
    return None if r2 is None else max(r2, 0.0)


def _mse_table(ctx: ReportContext, grid: Grid, depths: Sequence[int]) -> list[str]:
    blocks = ("plain", "residual")
    header = ["inputs", "σ", "width w", "plain bound"] + [f"{b} N={n}" for b in blocks for n in depths]
    body = []
    for (data, act, width), by in sorted(grid.items()):
        bound = bottleneck_bound(ctx, by, width)
        cells = [data, act, str(width), "–" if bound is None else f"{bound:.4f}"]
        cells += [mean_std([m.train.get("train_loss") for m in by.get(b, {}).get(n, [])], "{:.4f}")
                  for b in blocks for n in depths]
        body.append(cells)
    return md_table(header, body)


def _rank_table(grid: Grid, n: int) -> list[str]:
    header = ["inputs", "σ", "width w", "plain: rank init → trained", "plain: R² trained",
              "residual: rank init → trained", "residual: R² trained"]
    body = []
    for (data, act, width), by in sorted(grid.items()):
        cells = [data, act, str(width)]
        for b in ("plain", "residual"):
            ms = by.get(b, {}).get(n, [])
            init = mean_std([_get(m, "rank_mean", "identity_init") for m in ms], "{:.1f}")
            cells += [f"{init} → {mean_std([_get(m, 'rank_mean') for m in ms], '{:.1f}')}",
                      mean_std([_floored_r2(m) for m in ms], "{:.3f}")]
        body.append(cells)
    return md_table(header, body)


def _layer_table(data: str, recs: list[dict[str, Any]]) -> list[str]:
    widths, d = recs[0]["widths"], recs[0]["dim"]
    acts = [a for a in ("relu", "tanh", "linear") if a in recs[0]["r2"]]
    header = ["width w", "w / d"] + [f"{a}: R²" for a in acts] + [f"{a}: rank" for a in acts]
    body = []
    for i, w in enumerate(widths):
        cells = [str(w), f"{w / d:g}"]
        cells += [mean_std([r["r2"][a][i] for r in recs], "{:.3f}") for a in acts]
        cells += [mean_std([r["rank"][a][i] for r in recs], "{:.1f}") for a in acts]
        body.append(cells)
    return [f"{data}, {len(recs)} seeds (random layers):", "", *md_table(header, body), ""]


@register_section("identity_mapping")
def identity_mapping_section(ctx: ReportContext) -> list[str] | None:
    """Training MSE of y = x against depth; the block's Jacobian rank and recoverability; random-layer info loss."""
    grid = identity_grid(ctx)
    if grid is None:
        return None
    depths = sorted({n for by in grid.values() for d in by.values() for n in d})
    seeds = max(len(ms) for by in grid.values() for d in by.values() for ms in d.values())
    lines = [
        "## Identity mapping (plain vs residual stacks fitting y = x)",
        "",
        "Final training MSE of y = x on the whole training set (inputs of unit mean variance: the fraction of the "
        f"input's variance not reproduced; predicting 0 scores 1). Mean ± sample std over up to {seeds} seeds. "
        "*plain bound*: the least MSE any plain stack of hidden width w can reach at any depth (its output lies in "
        "a w-dimensional affine subspace: the training inputs' covariance eigenvalues beyond the top w, over d); "
        "0 when w ≥ d. A residual stack has no such bound.",
        "",
        *_mse_table(ctx, grid, depths),
        "",
        f"The block map x ↦ block(x) at N = {depths[-1]}: mean numerical rank of its Jacobian over the first 256 "
        "training points (of d), and the held-out R² of the best affine reconstruction of x from block(x) "
        "(fitted on the even points, scored on the odd; below 0 — worse than the mean — counted as 0).",
        "",
        *_rank_table(grid, depths[-1]),
        "",
    ]
    layers = random_layers(ctx)
    if layers:
        lines += ["Information a random layer σ(W x) loses (Sandler et al. 2018): x standardised, W of width w "
                  "with N(0, 1/d) entries, no bias; held-out R² of the best affine reconstruction of x, and the "
                  "mean rank of the Jacobian diag(σ'(Wx)) W (of d). `linear` is the control without σ.", ""]
        for data, recs in layers.items():
            lines += _layer_table(data, recs)
    return lines


@register_plot("identity_mapping.png")
def identity_mapping_plot(ctx: ReportContext) -> Figure | None:
    """Training MSE against depth per (inputs, width), one line per block and activation; random-layer R² and
    Jacobian rank against width."""
    grid = identity_grid(ctx)
    if grid is None:
        return None
    panels = sorted({(data, width) for data, _, width in grid})
    layers = random_layers(ctx)
    n = len(panels) + len(layers)
    cols = 3
    rows = -(-n // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (data, width) in zip(axes, panels):
        depths: set[int] = set()
        for (d, act, w), by in sorted(grid.items()):
            if (d, w) != (data, width):
                continue
            for b, per_n in sorted(by.items()):
                pts = {k: s for k, ms in per_n.items() if (s := stats([m.train.get("train_loss") for m in ms]))}
                depths |= set(pts)
                stats_line(ax, pts, color=BLOCK_COLORS.get(b), linestyle=ACT_STYLES.get(act, "-"),
                           label=f"{b}, {act}")
        bound = bottleneck_bound(ctx, next(by for (d, _, w), by in grid.items() if (d, w) == (data, width)), width)
        if bound:
            ax.axhline(bound, color="black", linestyle=":", linewidth=1, label="plain bound (rank w)")
        ax.set_yscale("log")
        log2_xticks(ax, depths, lambda v: f"{v:g}")
        ax.set_xlabel("depth N (layers, log₂ scale)")
        ax.set_ylabel("training MSE of y = x (log scale)")
        ax.set_title(f"{data}, width w = {width}")
        ax.grid(True, alpha=0.3)
    for ax, (data, recs) in zip(axes[len(panels):], layers.items()):
        widths, d = recs[0]["widths"], recs[0]["dim"]
        ratios = [w / d for w in widths]
        for a in recs[0]["r2"]:
            r2 = {x: s for i, x in enumerate(ratios) if (s := stats([r["r2"][a][i] for r in recs]))}
            rank = {x: s for i, x in enumerate(ratios) if (s := stats([r["rank"][a][i] / d for r in recs]))}
            color = {"relu": "tab:red", "tanh": "tab:orange", "linear": "tab:gray"}.get(a)
            stats_line(ax, r2, color=color, linestyle="-", label=f"{a}: R² of x from σ(Wx)")
            stats_line(ax, rank, color=color, linestyle=":", marker="s", markersize=3,
                       label=f"{a}: Jacobian rank / d")
        log2_xticks(ax, ratios, lambda v: f"{v:g}")
        ax.axvline(1.0, color="black", linewidth=0.8, alpha=0.5)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("layer width / input dim (w / d, log₂ scale)")
        ax.set_ylabel("fraction kept")
        ax.set_title(f"random layer on {data}")
        ax.grid(True, alpha=0.3)
    handles = legend_union(axes[: len(panels)])
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=5, fontsize=8,
                   handlelength=3.5)
    for ax in axes[len(panels): n]:
        ax.legend(fontsize=7)
    fig.suptitle("Identity mapping: plain vs residual stacks fitting y = x; information a random layer keeps")
    return fig
