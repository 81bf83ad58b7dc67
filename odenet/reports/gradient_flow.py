"""Report section and plot for the ``gradient_flow`` experiment: ||dL/dx_k|| in depth at initialisation and after
training, plain vs residual vs an ODE block.

Registered when :mod:`odenet.reports` is imported. Both read each run's ``metrics.json`` (``analysis.gradients``
and ``analysis.gradients_init``, written by ``odenet.runner.measure``) and return ``None`` when no run has them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from .chance import label_mark, withheld_line, withhold
from .collect import ReportContext
from .figures import legend_union
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import BLOCK_COLORS, Run, by_train_label, ok_runs


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


def _ratio(curve: tuple[np.ndarray, np.ndarray] | None) -> str:
    if curve is None:
        return "–"
    norms = curve[1]
    return f"{norms[0]:.3g} / {norms[-1]:.3g} = {norms[0] / norms[-1]:.3g}" if norms[-1] > 0 else f"{norms[0]:.3g} / 0"


@register_section("gradient_flow")
def gradient_flow_section(ctx: ReportContext) -> list[str] | None:
    """||dL/dx|| at the block's input and output, at initialisation and trained, per model."""
    groups = _gradient_runs(ctx)
    if groups is None:
        return None
    body = []
    for label, ms in groups.items():
        init, trained = _mean_curve(ms, "gradients_init"), _mean_curve(ms, "gradients")
        body.append([label + label_mark(ctx, [m.run_dir for m in ms]), str(len(ms)), _ratio(init), _ratio(trained)])
    lines = [
        "## Gradient flow",
        "",
        "||dL/dx|| at the block's input x_0 and output x_N (mean per-sample norm over the analysis batch, mean "
        "over seeds), and their ratio: < 1 vanishing towards the input, > 1 exploding. ODE blocks: states at "
        "the analysis times.",
        "",
        *md_table(["model", "runs", "at init: ‖g_0‖ / ‖g_N‖", "trained: ‖g_0‖ / ‖g_N‖"], body),
    ]
    # After training, the comparison rests on the controls: every residual or ODE model and the shallowest plain
    # net must have trained (a deeper plain net at chance is what vanishing gradients lead to).
    plain = [m for ms in groups.values() for m in ms if m.train.get("block") == "plain"]
    shallowest = min((m.train.get("steps") or 0 for m in plain), default=0)
    controls = [m.run_dir for ms in groups.values() for m in ms
                if m.train.get("block") != "plain" or (m.train.get("steps") or 0) == shallowest]
    withheld = withhold(ctx, controls)
    if withheld is None:
        return lines
    text = withheld_line("Gradient flow after training", withheld)
    return Section([*lines, text, ""], [text])


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
