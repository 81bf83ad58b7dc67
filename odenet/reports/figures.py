"""Figures: saving small PNGs, shared plot helpers and the built-in plots of every report.

Built-in plots (registered first, so they come first): accuracy and NFE against the training step size, and
accuracy against the number of test steps per trained model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..integrator import fmt_h
from ..runner.io import atomic_write
from .collect import ReportContext, Row
from .markdown import fmt, model_label
from .registry import register_plot
from .stats import (
    Stats,
    adaptive_eval,
    at_train_step,
    group,
    matched_series,
    model_key,
    ok,
    setting_keys,
    sort_key,
    sort_value,
    stats,
)

MAX_PNG_BYTES = 300_000


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
    atomic_write(path, lambda f: f.write(data), binary=True)
    return path


def _palette_png(data: bytes) -> bytes:
    from PIL import Image  # a matplotlib dependency

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


# ----------------------------------------------------------------------------------------------
# Shared helpers


def solver_colors(rows: Sequence[Row]) -> dict[str, Any]:
    """One tab10 colour per solver name among the rows' training and test solvers."""
    names = sorted({str(r[k]) for r in rows for k in ("train_solver", "test_solver") if r[k] is not None})
    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def log2_xticks(ax: Axes, values: Iterable[float], label: Callable[[float], str]) -> None:
    """Log2 x axis with a labelled tick at each data value."""
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [label(v) for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def panel_grid(n: int, width: float = 4.6, height: float = 3.6, cols: int = 3) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` panels (rows of ``cols``, shared y), the unused ones hidden."""
    ncols = min(n, cols)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols + 2.2, height * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def legend_union(axes: Sequence[Axes]) -> dict[str, Any]:
    """Legend label -> handle over all panels, first occurrence first."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return seen


def stats_line(ax: Axes, points: dict[float, Stats], band: bool = True, **kw: Any) -> None:
    """Means against x, with a min–max band when some point has several values."""
    xs = sorted(points)
    means = [points[x].mean for x in xs]
    ax.plot(xs, means, marker=kw.pop("marker", "o"), markersize=kw.pop("markersize", 5), **kw)
    if band and any(points[x].n > 1 for x in xs):
        ax.fill_between(xs, [points[x].lo for x in xs], [points[x].hi for x in xs], color=kw.get("color"), alpha=0.15)


# ----------------------------------------------------------------------------------------------
# Built-in plots


def _plot_vs_train_step(rows: list[Row], metric: str, title: str, ylabel: str, log_y: bool) -> Figure | None:
    """``metric`` vs training step size, one line per test solver at the training step size (+ adaptive)."""
    settings = setting_keys(rows)
    usable = [
        r
        for r in rows
        if ok(r, metric) and r["train_step_size"] is not None and (adaptive_eval(r) or at_train_step(r))
    ]
    panels = group(usable, lambda r: (r["train_solver"], tuple(r[k] for k in settings)))
    series = {p: group(rs, matched_series) for p, rs in panels.items()}
    if not any(len({r["train_step_size"] for r in rs}) > 1 for s in series.values() for rs in s.values()):
        return None
    colors = solver_colors(rows)
    order = sorted(series, key=sort_key)
    fig, axes = panel_grid(len(order), width=6.0, height=4.2)
    steps_of = {r["train_step_size"]: r["train_steps"] for r in usable}
    shared_legend = len(order) > 1  # one legend outside the panels; thick line = that panel's training solver
    band = max(len(s) for s in series.values()) <= 6  # more overlapping bands turn into mud
    for ax, panel in zip(axes, order):
        train_solver, extra = panel
        adaptive_styles = iter(["--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))] * 8)
        for kind, label in sorted(series[panel], key=lambda s: (s[0] != "fixed", s[1] != train_solver, s[1])):
            rs = series[panel][(kind, label)]
            points = {h: stats(r[metric] for r in hs) for h, hs in group(rs, lambda r: r["train_step_size"]).items()}
            is_train = kind == "fixed" and label == train_solver
            stats_line(
                ax,
                points,
                label=f"{label} (training solver)" if is_train and not shared_legend else label,
                color=colors.get(str(rs[0]["test_solver"])),
                linestyle=next(adaptive_styles) if kind == "adaptive" else "-",
                band=band,
                linewidth=2.6 if is_train else 1.6,
                marker="s" if kind == "adaptive" else "o",
                zorder=3 if is_train else 2,
            )
        hs = [r["train_step_size"] for r in panels[panel]]
        log2_xticks(ax, hs, lambda h: f"{fmt_h(h)}\nN={fmt(steps_of.get(h))}" if steps_of.get(h) else fmt_h(h))
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("training step size h = T/N (log₂ scale)")
        extra_text = ", ".join(f"{k}={fmt(v)}" for k, v in zip(settings, extra))
        ax.set_title(f"trained with {train_solver}" + (f", {extra_text}" if extra_text else ""), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if not shared_legend:
            ax.legend(title="test solver (fixed-step: at the training h)", fontsize=8, title_fontsize=8)
    for ax in axes[:: min(len(axes), 3)]:
        ax.set_ylabel(ylabel)
    if shared_legend:
        handles = legend_union(axes)
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
def plot_accuracy_vs_train_step(ctx: ReportContext) -> Figure | None:
    """Test accuracy vs training step size h, per test solver used at the training step size."""
    return _plot_vs_train_step(
        ctx.rows, "accuracy", "Test accuracy vs training step size", "test accuracy (fraction correct)", log_y=False
    )


@register_plot("accuracy_vs_test_steps.png")
def plot_accuracy_vs_test_steps(ctx: ReportContext) -> Figure | None:
    """Small multiples, one per fixed-step test solver: accuracy vs test steps, one line per trained model."""
    rows = ctx.rows
    settings = setting_keys(rows)
    usable = [r for r in rows if ok(r) and r["test_steps"] is not None]
    lines = group(usable, lambda r: (r["test_solver"], model_key(r, settings)))
    if not any(len({r["test_steps"] for r in rs}) > 1 for rs in lines.values()):
        return None
    solvers = sorted({r["test_solver"] for r in usable}, key=sort_value)
    models = sorted({model_key(r, settings) for r in usable}, key=sort_key)
    cmap = colormaps["viridis"]
    color = {m: cmap(0.9 * i / max(len(models) - 1, 1)) for i, m in enumerate(models)}
    styles = ["-", "--", ":", "-."]
    train_solvers = sorted({m[0] for m in models}, key=sort_value)
    band = len(models) <= 6  # more overlapping bands turn into mud (and bloat the PNG)
    fig, axes = panel_grid(len(solvers))
    for ax, solver in zip(axes, solvers):
        for m in models:
            rs = lines.get((solver, m))
            if not rs:
                continue
            by_n = group(rs, lambda r: r["test_steps"])
            points = {n: stats(r["accuracy"] for r in ns) for n, ns in by_n.items()}
            stats_line(
                ax,
                points,
                band=band,
                label=model_label(m, settings),
                color=color[m],
                linestyle=styles[train_solvers.index(m[0]) % len(styles)],
                linewidth=1.6,
            )
            own = [n for n, ns in by_n.items() if any(r["is_train_solver"] for r in ns)]
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
        log2_xticks(ax, [r["test_steps"] for r in usable if r["test_solver"] == solver], lambda n: f"{n:g}")
        ax.set_title(f"tested with {solver}", fontsize=10)
        ax.set_xlabel("test steps N (log₂ scale)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:: min(len(axes), 3)]:
        ax.set_ylabel("test accuracy (fraction correct)")
    seen = legend_union(axes)
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
def plot_nfe(ctx: ReportContext) -> Figure | None:
    """Mean NFE vs training step size h, per test solver used at the training step size."""
    return _plot_vs_train_step(
        ctx.rows,
        "nfe",
        "Function evaluations vs training step size",
        "NFE (field evaluations per forward pass, log scale)",
        log_y=True,
    )
