"""Report section and plot for the ``gradient_flow`` experiment: ||dL/dx_k|| in depth at initialisation and after
training, plain vs residual vs an ODE block.

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json`` (``analysis.gradients``
and ``analysis.gradients_init``, written by ``odenet.runner.measure``) and return ``None`` when no run has them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..runner.rundir import RunDirError
from .chance import label_mark, mark_cell, value_at_chance, withheld_section
from .collect import ReportContext
from .figures import legend_union
from .markdown import md_table
from .registry import register_plot, register_section
from .runs import BLOCK_COLORS, Run, by_train_label, ok_runs
from .stats import mean_std, paired, paired_text


def _gradient_runs(ctx: ReportContext) -> dict[str, list[Run]] | None:
    runs = [m for m in ok_runs(ctx) if m.analysis("gradients") or m.analysis("gradients_init")]
    return by_train_label(runs) if runs else None


def _mean_curve(ms: list[Run], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    curves = [m.analysis(name) for m in ms]
    curves = [c for c in curves if c]
    if not curves:
        return None
    t = np.asarray(curves[0]["times"], dtype=float)
    norms = np.asarray([c["norms"] for c in curves if len(c["norms"]) == len(t)], dtype=float)
    return t, norms.mean(axis=0)


def _norms(run: Run, name: str) -> tuple[float, float] | None:
    """(‖g_0‖, ‖g_N‖): the gradient norm at the block's input and output for one run (None if not measured)."""
    curve = run.analysis(name)
    if not curve or not curve.get("norms"):
        return None
    return float(curve["norms"][0]), float(curve["norms"][-1])


def ratios(ms: list[Run], name: str) -> dict[Any, float]:
    """seed -> ‖g_0‖ / ‖g_N‖ of ``name`` (``gradients_init`` or ``gradients``); 0 where ‖g_0‖ underflowed."""
    out = {}
    for m in ms:
        g = _norms(m, name)
        if g is not None and g[1] > 0:
            out[m.seed] = g[0] / g[1]
    return out


def _g(ms: list[Run], name: str, end: int) -> str:
    return mean_std([g[end] if (g := _norms(m, name)) else None for m in ms], "{:.3g}")


def _adjoint(run: Run) -> bool | None:
    """Whether the run's block was trained through the adjoint (None: its config is not readable)."""
    try:
        return bool(run.cfg.solver.adjoint)
    except RunDirError:
        return None


def _ode_name(ms: list[Run]) -> str:
    """``ODE (adjoint)``, ``ODE`` (plain backprop) or ``ODE (adjoint: mixed)`` / ``ODE`` when the config is unknown."""
    modes = {_adjoint(m) for m in ms}
    if modes == {True}:
        return "ODE (adjoint)"
    return "ODE (adjoint: mixed)" if len(modes - {None}) > 1 else "ODE"


def _paired_lines(groups: dict[str, list[Run]]) -> list[str]:
    """Paired by seed: the ODE block minus the residual stack at the same N, and each shortcut block's deepest minus
    shallowest N, of the ratio ‖g_0‖ / ‖g_N‖ (groups keyed by their full label: never two models pooled; a
    comparison is made only when the models to pair are unique)."""
    info = {label: (ms[0].train.get("block"), ms[0].train.get("steps")) for label, ms in groups.items()}
    body = []
    for label, (block, n) in info.items():
        residual = [k for k, (b, m) in info.items() if b == "residual" and m == n]
        if block == "ode" and n and len(residual) == 1:
            for name, when in (("gradients_init", "init"), ("gradients", "trained")):
                d = paired(ratios(groups[label], name), ratios(groups[residual[0]], name))
                body.append([f"{_ode_name(groups[label])} − residual, N={n}", when, str(len(d)),
                             paired_text(d, "{:+.3g}")])
    for block in ("residual", "ode", "plain"):
        at = {}
        for label, (b, n) in info.items():
            if b == block and n:
                at.setdefault(n, []).append(label)
        ns = sorted(at)
        if len(ns) > 1 and len(at[ns[0]]) == 1 and len(at[ns[-1]]) == 1:
            lo, hi = groups[at[ns[0]][0]], groups[at[ns[-1]][0]]
            for name, when in (("gradients_init", "init"), ("gradients", "trained")):
                d = paired(ratios(hi, name), ratios(lo, name))
                body.append([f"{block}: N={ns[-1]} − N={ns[0]}", when, str(len(d)), paired_text(d, "{:+.3g}")])
    if not body:
        return []
    return ["Paired by seed: difference of the ratio ‖g_0‖ / ‖g_N‖ (mean ± sample std over seeds, and on how many "
            "seeds it is positive).", "",
            *md_table(["comparison", "when", "seeds", "difference of ‖g_0‖ / ‖g_N‖"], body)]


@register_section("gradient_flow")
def gradient_flow_section(ctx: ReportContext) -> list[str] | None:
    """||dL/dx|| at the block's input and output, at initialisation and trained, per model (mean ± std over
    seeds), and paired differences between models."""
    groups = _gradient_runs(ctx)
    if groups is None:
        return None
    body = []
    for label, ms in groups.items():
        acc = [m.train_eval().get("accuracy") for m in ms]
        used = set(ratios(ms, "gradients_init")) | set(ratios(ms, "gradients"))  # the seeds the ratios rest on
        body.append([label + label_mark(ctx, [m.run_dir for m in ms]), str(len(used)),
                     mark_cell(mean_std(acc), value_at_chance(acc, [m.baseline for m in ms])),
                     mean_std(ratios(ms, "gradients_init").values(), "{:.3g}"),
                     _g(ms, "gradients", 0), _g(ms, "gradients", 1),
                     mean_std(ratios(ms, "gradients").values(), "{:.3g}")])
    lines = [
        "## Gradient flow",
        "",
        "||dL/dx|| at the block's input x_0 and output x_N (mean per-sample norm over the analysis batch), and their "
        "ratio ‖g_0‖ / ‖g_N‖ (< 1 vanishing towards the input, > 1 exploding; 0 where ‖g_0‖ underflowed): mean ± "
        "sample std over seeds, the ratio taken per seed. ODE blocks: states at the analysis times.",
        "",
        *md_table(["model", "seeds", "test acc.", "at init: ‖g_0‖ / ‖g_N‖", "trained: ‖g_0‖", "trained: ‖g_N‖",
                   "trained: ‖g_0‖ / ‖g_N‖"], body),
        *_paired_lines(groups),
    ]
    # After training, the comparison rests on the controls: every residual or ODE model and the shallowest plain
    # net must have trained (a deeper plain net at chance is what vanishing gradients lead to).
    plain = [m for ms in groups.values() for m in ms if m.train.get("block") == "plain"]
    shallowest = min((m.train.get("steps") or 0 for m in plain), default=0)
    controls = [m.run_dir for ms in groups.values() for m in ms
                if m.train.get("block") != "plain" or (m.train.get("steps") or 0) == shallowest]
    return withheld_section(ctx, lines, "Gradient flow after training", controls)


@register_plot("gradient_flow.png")
def gradient_flow_plot(ctx: ReportContext) -> Figure | None:
    """||dL/dx_k|| against depth, at initialisation and after training, one line per model."""
    groups = _gradient_runs(ctx)
    if groups is None:
        return None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    styles = ["-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2))]
    steps = sorted({(ms[0].train.get("steps") or 0) for ms in groups.values()})
    for ax, name, title in ((axes[0], "gradients_init", "at initialisation"), (axes[1], "gradients", "after training")):
        for label, ms in groups.items():
            curve = _mean_curve(ms, name)
            if curve is None:
                continue
            t, norms = curve
            block = ms[0].train.get("block")
            n = ms[0].train.get("steps") or 0
            positive = np.where(norms > 0, norms, np.nan)
            ax.plot(t, positive, color=BLOCK_COLORS.get(block), linestyle=styles[steps.index(n) % len(styles)],
                    marker="o" if len(t) <= 17 else None, markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("depth t = k h of the state x_k (T = 1; x_0 input, x_N output)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("‖dL/dx_k‖ (mean per-sample norm, log scale)")
    handles = legend_union(list(axes))
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", title="model", fontsize=8)
    fig.suptitle("Gradient flow: norm of the loss gradient at every state (mean over seeds; zeros not drawn)")
    return fig
