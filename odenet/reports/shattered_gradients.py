"""Report section and plots for the ``shattered_gradients`` experiment (Balduzzi et al. 2017): does the input
gradient along a line turn into white noise with depth for plain nets, and stay brown for residual and ODE blocks?

Registered when :mod:`odenet.reports` is imported. All read each run's ``metrics.json`` (``analysis.shattering``
and ``analysis.shattering_init``, written by ``odenet.runner.measure``) and its config (block kind, ``block.T``,
steps), and return ``None`` when no run has them.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from matplotlib.figure import Figure

from ..integrator import fmt_h
from .chance import label_mark, mark_cell, value_at_chance
from .collect import ReportContext
from .figures import legend_union, log2_xticks
from .markdown import md_table
from .registry import register_plot, register_section
from .runs import Run, ok_runs
from .stats import mean_std

PHASES = (("shattering_init", "at init"), ("shattering", "trained"))
KINDS = ("plain", "ResNet h=1", "ResNet h=1/N", "ODE")
COLORS = {"plain": "tab:red", "ResNet h=1": "tab:orange", "ResNet h=1/N": "tab:blue", "ODE": "tab:green"}
INITS = {"default": "default init", "he": "He init"}
Groups = dict[str, dict[int, list[Run]]]


def block_kinds(run: Run) -> list[str]:
    """``plain``, ``ODE``, ``ResNet h=1`` (T = N) or ``ResNet h=1/N`` (T = 1; else ``ResNet h=...``). A one-step
    ResNet with T = 1 is both ResNets."""
    cfg = run.cfg
    if cfg.block.kind in ("plain", "ode"):
        return ["plain" if cfg.block.kind == "plain" else "ODE"]
    steps, T = cfg.solver.steps or 1, float(cfg.block.T)
    kinds = [k for k, ok in (("ResNet h=1", math.isclose(T, steps)), ("ResNet h=1/N", math.isclose(T, 1.0))) if ok]
    return kinds or [f"ResNet h={fmt_h(T / steps)}"]


def field_init(run: Run) -> str:
    """``default init`` or ``He init`` (``field.init``)."""
    init = str(run.cfg.field.get("init", "default"))
    return INITS.get(init, init)


def _groups(ctx: ReportContext) -> dict[str, Groups] | None:
    """init -> block kind -> depth N -> runs."""
    runs = [m for m in ok_runs(ctx) if m.analysis("shattering") or m.analysis("shattering_init")]
    if not runs:
        return None
    out: dict[str, Groups] = {}
    for m in runs:
        for kind in block_kinds(m):
            ms = out.setdefault(field_init(m), {}).setdefault(kind, {}).setdefault(int(m.cfg.solver.steps or 0), [])
            if all(other.seed != m.seed for other in ms):  # the two one-step ResNets are one model: once per seed
                ms.append(m)
    order = {k: i for i, k in enumerate(KINDS)}
    inits = {v: i for i, v in enumerate(INITS.values())}
    return {init: dict(sorted(g.items(), key=lambda kv: (order.get(kv[0], 9), kv[0])))
            for init, g in sorted(out.items(), key=lambda kv: (inits.get(kv[0], 9), kv[0]))}


def _depths(by_init: dict[str, Groups]) -> list[int]:
    return sorted({n for g in by_init.values() for d in g.values() for n in d})


def _values(ms: list[Run], phase: str, key: str) -> list[float | None]:
    return [(m.analysis(phase) or {}).get(key) for m in ms]


def _table(groups: Groups, depths: list[int], key: str, fmt: str) -> list[str]:
    header = ["depth N"] + [f"{k}: {label}" for k in groups for _, label in PHASES]
    body = []
    for n in depths:
        cells = [str(n)]
        for d in groups.values():
            ms = d.get(n, [])
            for phase, _ in PHASES:
                text = mean_std(_values(ms, phase, key), fmt)
                if phase == "shattering":  # a trained model at chance is marked
                    acc = [m.train_eval().get("accuracy") for m in ms]
                    text = mark_cell(text, value_at_chance(acc, [m.baseline for m in ms]))
                cells.append(text)
        body.append(cells)
    return md_table(header, body)


@register_section("shattered_gradients")
def shattered_gradients_section(ctx: ReportContext) -> list[str] | None:
    """Lag-1 autocorrelation and spectral slope of the input gradient along lines, per init, block and depth."""
    by_init = _groups(ctx)
    if by_init is None:
        return None
    every = [ms for g in by_init.values() for d in g.values() for ms in d.values()]
    a = every[0][0].analysis("shattering") or every[0][0].analysis("shattering_init") or {}
    points, lines = a.get("points"), len(a.get("pairs") or [])
    depths = _depths(by_init)
    seeds = max(len(ms) for ms in every)
    noise = 1 / math.sqrt(points) if points else float("nan")
    out = [
        "## Shattered gradients",
        "",
        f"The derivative dy/ds of y = <u, logits> (u a fixed random unit vector) along {lines} segments "
        f"x_i + s (x_j - x_i) between training examples of different classes, {points} points each. Lag-1 "
        "autocorrelation of the centred sequence (1: smooth, brown noise; 0: white noise, shattered; "
        f"white noise of {points} points gives 0 ± {noise:.3f}) and log-log slope of its power spectrum "
        "(-2: brown, 0: white), mean over the segments, then mean ± sample std over up to "
        f"{seeds} seeds. † after a trained value: the model is at chance.",
        "",
    ]
    for init, groups in by_init.items():
        acc_body = []
        for kind, d in groups.items():
            row = [kind + label_mark(ctx, [m.run_dir for ms in d.values() for m in ms])]
            row += [mean_std([m.train_eval().get("accuracy") for m in d.get(n, [])], "{:.3f}") for n in depths]
            acc_body.append(row)
        out += [
            f"### Lag-1 autocorrelation, {init}",
            "",
            *_table(groups, depths, "lag1_mean", "{:.3f}"),
            "",
            f"### Spectral slope, {init}",
            "",
            *_table(groups, depths, "slope_mean", "{:+.2f}"),
            "",
            f"### Test accuracy, {init} (control: which models trained)",
            "",
            *md_table(["block"] + [f"N={n}" for n in depths], acc_body),
            "",
        ]
    return out


def _mean_seq(ms: list[Run], phase: str, key: str) -> np.ndarray | None:
    seqs = [(m.analysis(phase) or {}).get(key) for m in ms]
    seqs = [np.asarray(s, dtype=float) for s in seqs if s]
    if not seqs or any(len(s) != len(seqs[0]) for s in seqs):
        return None
    return np.nanmean(np.stack(seqs), axis=0)


STYLES = {"He init": "-", "default init": "--"}


@register_plot("shattering_depth.png")
def shattering_depth_plot(ctx: ReportContext) -> Figure | None:
    """Lag-1 autocorrelation and spectral slope against depth, at init and trained, one line per block and init."""
    by_init = _groups(ctx)
    if by_init is None:
        return None
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey="row")
    depths = _depths(by_init)
    for col, (phase, title) in enumerate(PHASES):
        for row, (key, ylabel) in enumerate((("lag1_mean", "lag-1 autocorrelation of dy/ds"),
                                             ("slope_mean", "spectral slope (log-log)"))):
            ax = axes[row][col]
            for init, groups in by_init.items():
                for kind, d in groups.items():
                    ns = sorted(d)
                    vals = [[v for v in _values(d[n], phase, key) if v is not None and math.isfinite(v)] for n in ns]
                    means = [statistics.fmean(v) if v else float("nan") for v in vals]
                    ax.plot(ns, means, marker="o", markersize=4, color=COLORS.get(kind),
                            linestyle=STYLES.get(init, ":"), label=f"{kind}, {init}")
                    for n, v in zip(ns, vals):
                        ax.scatter([n] * len(v), v, color=COLORS.get(kind), s=8, alpha=0.35)
            for ref, text in ((0.0, "white noise"), (-2.0 if row else 1.0, "brown / smooth")):
                ax.axhline(ref, color="grey", linestyle=":", linewidth=1)
                ax.annotate(text, (depths[0], ref), fontsize=7, color="grey", va="bottom")
            log2_xticks(ax, depths, lambda v: str(int(v)))
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{ylabel.split(' (')[0]}, {title}")
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 1:
                ax.set_xlabel("depth N (blocks / steps, log₂ scale)")
    handles = legend_union([ax for r in axes for ax in r])
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", title="block (dots: seeds)",
               fontsize=8)
    fig.suptitle("Shattered gradients: how white the input gradient along a line is, against depth")
    return fig


@register_plot("shattering_traces.png")
def shattering_traces_plot(ctx: ReportContext) -> Figure | None:
    """Example dy/ds along the first segment (lowest seed), per init and block: shallowest and deepest N."""
    by_init = _groups(ctx)
    if by_init is None:
        return None
    depths = _depths(by_init)
    panels = [(depths[0], "shattering_init"), (depths[-1], "shattering_init"), (depths[-1], "shattering")]
    rows = [(init, kind, d) for init, groups in by_init.items() for kind, d in groups.items()]
    fig = Figure(figsize=(13, 1.55 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(panels), squeeze=False, sharex=True)
    for r, (init, kind, d) in enumerate(rows):
        for c, (n, phase) in enumerate(panels):
            ax = axes[r][c]
            ms = sorted(d.get(n, []), key=lambda m: m.seed or 0)
            trace = next(((m.analysis(phase) or {}).get("example") for m in ms if m.analysis(phase)), None)
            if trace:
                g = np.asarray(trace, dtype=float)
                rms = np.sqrt(np.mean(g**2))
                ax.plot(np.linspace(0, 1, len(g)), g / rms if rms > 0 else g, color=COLORS.get(kind), linewidth=0.8)
                ax.text(0.01, 0.95, f"rms {rms:.2g}", transform=ax.transAxes, fontsize=7, va="top")
            ax.set_title(f"{kind}, {init}, N={n}, {dict(PHASES)[phase]}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if c == 0:
                ax.set_ylabel("dy/ds / rms", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("position s on the segment")
    fig.suptitle("Input gradient along a segment between two training examples (first segment, lowest seed)")
    return fig


@register_plot("shattering_spectra.png")
def shattering_spectra_plot(ctx: ReportContext) -> Figure | None:
    """Mean autocorrelation against lag and mean normalised spectrum at the deepest N, per block and init."""
    by_init = _groups(ctx)
    if by_init is None:
        return None
    n = _depths(by_init)[-1]
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharey="row")
    for col, (phase, title) in enumerate(PHASES):
        ax_ac, ax_p = axes[0][col], axes[1][col]
        for init, groups in by_init.items():
            for kind, d in groups.items():
                ms = d.get(n, [])
                ac, p = _mean_seq(ms, phase, "autocorrelation"), _mean_seq(ms, phase, "power")
                f = _mean_seq(ms, phase, "frequencies")
                style = dict(linestyle=STYLES.get(init, ":"), color=COLORS.get(kind), label=f"{kind}, {init}")
                if ac is not None:
                    ax_ac.plot(np.arange(len(ac)), ac, **style)
                if p is not None and f is not None:
                    ax_p.loglog(f, np.where(p > 0, p, np.nan), linewidth=0.9, **style)
        f_ref = np.arange(1, 129, dtype=float)
        ax_p.loglog(f_ref, 0.5 * f_ref**-2.0, color="grey", linestyle=":", label="∝ f⁻² (brown)")
        ax_p.loglog(f_ref, np.full_like(f_ref, 1 / len(f_ref)), color="black", linestyle=":", label="flat (white)")
        ax_ac.axhline(0, color="grey", linewidth=0.8)
        ax_ac.set_title(f"mean autocorrelation, N={n}, {title}")
        ax_ac.set_xlabel("lag (points)")
        ax_p.set_title(f"mean power spectrum (each normalised to 1), N={n}, {title}")
        ax_p.set_xlabel("frequency (cycles per segment)")
        for ax in (ax_ac, ax_p):
            ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("autocorrelation r(k)")
    axes[1][0].set_ylabel("power (share of the total)")
    handles = legend_union([ax for r in axes for ax in r])
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    fig.suptitle(f"Shattered gradients at depth N={n}: autocorrelation and spectrum of dy/ds "
                 "(mean over segments and seeds)")
    return fig
