"""Report section and plot for the ``learned_steps`` experiment, registered when :mod:`odenet.reports` is imported.

They read each run's ``config.yaml`` (data set, block, ``optimizer.step_lr_scale``), ``history.csv`` (the
learned ``h_0 .. h_{N-1}`` at every log step) and ``metrics.json`` (evaluations; ``analysis.adaptive_steps``:
the accepted steps of an adaptive solver on the trained field, written by :mod:`odenet.measure`), and
return ``None`` for a sweep without learned step sizes or adaptive-step measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..analysis.adaptive_steps import concentration, local_step_sizes, step_shares
from ..runner.rundir import RunDirError
from .chance import label_mark, mark_cell, value_at_chance, withheld_line, withhold
from .collect import ReportContext
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .stats import mean_std

Run = dict[str, Any]

GRID_COLORS = {"uniform": "tab:blue", "learned": "tab:purple"}
FAST_COLORS = ["tab:red", "tab:orange", "tab:brown"]
ACC = "{:.3f}"  # accuracy cells


def _h_columns(history: list[dict[str, str]]) -> list[str]:
    if not history:
        return []
    cols = [c for c in history[0] if c.startswith("h_") and c[2:].isdigit()]
    return sorted(cols, key=lambda c: int(c[2:]))


def _grid_label(block: str | None, scale: float) -> str:
    if block == "learned_steps":
        return "learned" if scale == 1.0 else f"learned, θ lr ×{scale:g}"
    return "uniform" if block == "residual" else str(block)


def _runs(ctx: ReportContext) -> list[Run]:
    """The ok stack runs with learned steps or an adaptive-step measurement, with what the plots need."""
    out = []
    for run_dir, folder in ctx.run_dirs():
        metrics = folder.metrics
        if metrics is None:
            continue
        try:
            cfg = folder.config
        except RunDirError:
            continue
        if metrics.get("status") != "ok":
            continue
        train = metrics.get("train") or {}
        adaptive = (metrics.get("analysis") or {}).get("adaptive_steps")
        adaptive = adaptive if isinstance(adaptive, dict) and "error" not in adaptive else None
        trajectory = (metrics.get("analysis") or {}).get("trajectory")
        speeds = trajectory.get("step_speeds") if isinstance(trajectory, dict) else None
        history = folder.history
        cols = _h_columns(history)
        if not cols and adaptive is None:
            continue
        scale = float(cfg.optimizer.step_lr_scale or 1.0)
        out.append({
            "dir": run_dir, "data": cfg.data.name or "?", "block": train.get("block"),
            "baseline": metrics.get("baseline_accuracy"),
            "steps": train.get("steps"), "T": float(cfg.block.T or 1.0),
            "grid": _grid_label(train.get("block"), scale), "seed": metrics.get("seed"),
            "evaluations": metrics.get("evaluations") or [], "adaptive": adaptive,
            "iterations": [int(float(r["iteration"])) for r in history] if cols else [],
            "h": np.array([[float(r[c]) for c in cols] for r in history]) if cols else None,
            "final_h": train.get("step_sizes"), "speeds": speeds,
        })
    return out if any(r["h"] is not None for r in out) or any(r["adaptive"] for r in out) else []


def _grid_order(label: str) -> tuple[int, str]:
    return (0 if label == "uniform" else 1 if label == "learned" else 2, label)


def _groups(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """data set -> grid label -> runs (seed order)."""
    out: dict[str, dict[str, list[Run]]] = {}
    for r in sorted(runs, key=lambda r: (r["data"], _grid_order(r["grid"]), r["seed"] if r["seed"] is not None else 0)):
        out.setdefault(r["data"], {}).setdefault(r["grid"], []).append(r)
    return {d: dict(sorted(g.items(), key=lambda kv: _grid_order(kv[0]))) for d, g in sorted(out.items())}


def _final_h(run: Run) -> list[float] | None:
    if run["final_h"]:
        return [float(v) for v in run["final_h"]]
    if run["h"] is not None and len(run["h"]):
        return [float(v) for v in run["h"][-1]]
    return None


def _own_h(run: Run) -> list[float] | None:
    """The trained block's grid: learned h_k, or the uniform T / N."""
    h = _final_h(run)
    if h is None and run["adaptive"] and run["adaptive"].get("block_step_sizes"):
        h = [float(v) for v in run["adaptive"]["block_step_sizes"]]
    if h is None and run["steps"]:
        h = [run["T"] / run["steps"]] * int(run["steps"])
    return h


def _accuracy(run: Run, solver: str, steps: int | None = None, train: bool | None = None) -> float | None:
    for e in run["evaluations"]:
        if e.get("status") != "ok" or e.get("test_solver") != solver:
            continue
        if steps is not None and e.get("test_steps") != steps:
            continue
        if train is not None and bool(e.get("is_train_solver")) != train:
            continue
        return e.get("accuracy")
    return None


def _uniform_accuracy(run: Run, steps: int) -> float | None:
    """Accuracy on the uniform Euler grid of ``steps`` steps (a residual net's training grid itself)."""
    if run["block"] == "residual":
        return _accuracy(run, "euler", train=True)
    return _accuracy(run, "euler", steps, train=False)


def _mean_list(lists: Sequence[Sequence[float] | None], fmt: str = "{:.2f}") -> str:
    arrays = [np.asarray(v, dtype=float) for v in lists if v is not None]
    if not arrays:
        return "–"
    return " / ".join(fmt.format(v) for v in np.mean(arrays, axis=0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if len(ra) < 3 or ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def adaptive_at(adaptive: dict[str, Any], times: Sequence[float], local: bool = True) -> list[float]:
    """The adaptive solver's step size in force at each of ``times`` (that of the step whose interval holds it;
    ``local``: the first and last steps count as their neighbours, see ``local_step_sizes``)."""
    starts = np.asarray(adaptive["step_starts"], dtype=float)
    sizes = np.asarray(local_step_sizes(adaptive["step_sizes"]) if local else adaptive["step_sizes"], dtype=float)
    idx = np.clip(np.searchsorted(starts, np.asarray(times, dtype=float), side="right") - 1, 0, len(sizes) - 1)
    return [float(v) for v in sizes[idx]]


def _correlation(run: Run) -> float | None:
    """Spearman correlation of the learned h_k with the adaptive solver's step at each learned step's midpoint."""
    h = _final_h(run)
    if run["block"] != "learned_steps" or h is None or not run["adaptive"]:
        return None
    mids = np.cumsum(h) - np.asarray(h) / 2
    return spearman(h, adaptive_at(run["adaptive"], mids))


def _snapshots(iterations: list[int], fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0)) -> list[int]:
    """Indices of the history rows nearest to ``fractions`` of training (the first and the last logged among them)."""
    n = len(iterations)
    if n == 0:
        return []
    return sorted({min(n - 1, round(f * (n - 1))) for f in fractions})


def _adaptive_shares(a: dict[str, Any]) -> list[float]:
    return step_shares(a["step_sizes"], a["T"], local=local_step_sizes(a["step_sizes"]))


def _speed_ratio(run: Run) -> float | None:
    """||F|| at the last step over ||F|| at the first (the trajectory measurement of the stack)."""
    v = run["speeds"]
    return float(v[-1] / v[0]) if v and v[0] > 0 else None


@register_section("learned_steps")
def learned_steps_section(ctx: ReportContext) -> list[str] | None:
    runs = _runs(ctx)
    if not runs:
        return None
    groups = _groups(runs)
    acc_body, conc_body, headlines = [], [], []
    for data, by_grid in groups.items():
        for grid, rs in by_grid.items():
            dirs = [r["dir"] for r in rs]
            label = grid + label_mark(ctx, dirs)
            own_acc = [_accuracy(r, "euler", train=True) for r in rs]
            n = int(rs[0]["steps"] or 0)
            adaptive = [r["adaptive"] for r in rs if r["adaptive"]]
            nfe = mean_std([a["nfe"] for a in adaptive], "{:.0f}")
            acc_steps = mean_std([a["steps_accepted"] for a in adaptive], "{:.1f}")
            rej_steps = mean_std([a["steps_rejected"] for a in adaptive], "{:.1f}")
            bases = [r["baseline"] for r in rs]

            def acc(values: list[float | None], bases: list[Any] = bases) -> str:
                return mark_cell(mean_std(values, ACC), value_at_chance(values, bases))

            acc_body.append([
                data, label, str(len(rs)),
                acc(own_acc),
                acc([_uniform_accuracy(r, n) for r in rs]) if n else "–",
                acc([_accuracy(r, "euler", 4 * n) for r in rs]) if n else "–",
                acc([_accuracy(r, "rk4", n) for r in rs]) if n else "–",
                acc([_accuracy(r, "dopri5") for r in rs]),
                f"{nfe} ({acc_steps} / {rej_steps})",
            ])
            own = [_own_h(r) for r in rs]
            conc = [concentration(h) for h in own if h]
            mid = []
            for r in rs:
                if r["h"] is not None and len(r["h"]):
                    mid.append(concentration(list(r["h"][(len(r["h"]) - 1) // 2]))["max_over_min"])
            correlations = [_correlation(r) for r in rs]
            corr = mean_std(correlations, "{:+.2f}")
            if any(c is not None for c in correlations):
                withheld = withhold(ctx, [r["dir"] for r in rs if _correlation(r) is not None])
                what = f"Rank correlation of the learned h_k with the adaptive steps ({data}, {grid})"
                corr = "withheld" if withheld else corr
                headlines.append(withheld_line(what, withheld) if withheld else f"{what}: {corr}.")
            conc_body.append([
                data, label,
                mean_std([c["max_over_min"] for c in conc], "{:.2f}"),
                mean_std(mid, "{:.2f}") if mid else "–",
                mean_std([c["max_over_uniform"] for c in conc], "{:.2f}"),
                mean_std([c["effective_fraction"] for c in conc], "{:.3f}"),
                _mean_list([c["index_thirds"] for c in conc]),
                _mean_list([step_shares(h, rs[0]["T"]) for h in own if h]),
                _mean_list([_adaptive_shares(a) for a in adaptive]),
                corr,
                mean_std([_speed_ratio(r) for r in rs], "{:.3g}"),
            ])
    rtols = sorted({(a["solver"], a["rtol"], a["atol"]) for r in runs if (a := r["adaptive"])})
    tol = ", ".join(f"{s} rtol={rt:g} atol={at:g}" for s, rt, at in rtols) or "no adaptive solve"
    lines = [
        "## Learned step sizes",
        "",
        "Accuracy (test set, mean ± sample std over seeds) of each trained model under its own training grid, "
        "under the uniform Euler grid with the same N (for learned steps: the same weights without their h_k), "
        f"4N uniform Euler steps, N rk4 steps and dopri5; and the adaptive re-solve of the trained field ({tol}, "
        "float64, on the analysis points): NFE (accepted / rejected steps).",
        "",
        *md_table(
            ["data", "grid", "runs", "acc. own grid", "acc. uniform euler N", "acc. euler 4N", "acc. rk4 N",
             "acc. dopri5", "adaptive re-solve: NFE (acc. / rej. steps)"],
            acc_body,
        ),
        "",
        "Concentration of the trained grid h_k (uniform: max/min = 1, max/(T/N) = 1, effective fraction "
        "exp(H(h/T))/N = 1, each third of the layers covering 1/3 of T). *Step share per time third*: the share "
        "of the steps falling in [0, T/3), [T/3, 2T/3), [2T/3, T] (uniform: 0.33 each; larger where the steps "
        "are smaller), for the trained grid and for the adaptive solver on the same field (its first step, the "
        "initial guess, and its last, clipped at T, count at their neighbours' size). *Rank correlation*: "
        "Spearman's between the learned h_k and the adaptive solver's step size at the midpoint of step k "
        "(same convention; +1: the learned steps are large where the adaptive ones are). *Speed ratio*: "
        "‖F(t, x)‖ at the last step of the stack over that at the first (mean over the analysis points).",
        "",
        *md_table(
            ["data", "grid", "max/min h", "max/min h mid-training", "max h/(T/N)", "effective fraction",
             "share of T by layer third", "step share per time third: own grid", "… adaptive solver",
             "rank corr. h_k vs adaptive", "speed ratio last/first step"],
            conc_body,
        ),
    ]
    for text in headlines:
        if "— withheld:" in text:
            lines += [text, ""]
    return Section(lines, headlines)


def _step_line(ax: Any, starts: Sequence[float], sizes: Sequence[float], **kw: Any) -> None:
    """A step function: value ``sizes[i]`` on ``[starts[i], starts[i] + sizes[i])``."""
    starts = list(starts)
    sizes = list(sizes)
    xs = starts + [starts[-1] + sizes[-1]]
    ys = sizes + [sizes[-1]]
    ax.step(xs, ys, where="post", **kw)


@register_plot("learned_steps.png")
def learned_steps_plot(ctx: ReportContext) -> Figure | None:
    """Per data set: learned h_k against k over training (one panel per learned variant), the adaptive solver's
    steps against t on every trained field, and the speed ||F(t_k, x_k)|| along the stack."""
    runs = _runs(ctx)
    if not runs:
        return None
    groups = _groups(runs)
    learned_labels = sorted({r["grid"] for r in runs if r["h"] is not None}, key=_grid_order)
    with_speed = any(r["speeds"] for r in runs)
    ncols = len(learned_labels) + 1 + with_speed
    fig = Figure(figsize=(4.8 * ncols + 1.0, 3.9 * len(groups) + 0.8), layout="constrained")
    axes = fig.subplots(len(groups), ncols, squeeze=False)
    colors = {"uniform": GRID_COLORS["uniform"], "learned": GRID_COLORS["learned"]}
    for i, label in enumerate(sorted({r["grid"] for r in runs} - set(colors), key=_grid_order)):
        colors[label] = FAST_COLORS[i % len(FAST_COLORS)]
    cmap = colormaps["viridis"]
    for row_axes, (data, by_grid) in zip(axes, groups.items()):
        for ax, label in zip(row_axes, learned_labels):
            _plot_h_over_training(ax, data, label, [r for r in by_grid.get(label, []) if r["h"] is not None], cmap)
        _plot_adaptive(row_axes[len(learned_labels)], data, by_grid, colors)
        if with_speed:
            _plot_speeds(row_axes[-1], data, by_grid, colors)
    fig.suptitle("Learned step sizes h_k over training, and the steps an adaptive solver takes on the same trained "
                 "fields")
    return fig


def _plot_h_over_training(ax: Any, data: str, label: str, rs: list[Run], cmap: Any) -> None:
    if not rs:
        ax.set_visible(False)
        return
    n_rows = min(len(r["h"]) for r in rs)
    h = np.stack([r["h"][:n_rows] for r in rs])  # (seeds, log steps, N)
    iterations = rs[0]["iterations"][:n_rows]
    n = h.shape[-1]
    k = np.arange(n)
    ax.plot(k, np.full(n, rs[0]["T"] / n), color="grey", linestyle="--", linewidth=1.2, label="init: T/N")
    picks = _snapshots(iterations)
    for j, p in enumerate(picks):
        color = cmap(0.9 * j / max(len(picks) - 1, 1))
        ax.plot(k, h[:, p].mean(axis=0), marker="o", markersize=3, color=color, label=f"iteration {iterations[p]}")
        if p == picks[-1] and len(rs) > 1:
            ax.fill_between(k, h[:, p].min(axis=0), h[:, p].max(axis=0), color=color, alpha=0.2)
    ax.set_xlabel("step k (layer)")
    ax.set_ylabel("h_k")
    ax.set_title(f"{data}: {label} h_k during training ({len(rs)} seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, title="mean over seeds; band: min–max at the end", title_fontsize=7)


def _plot_adaptive(ax: Any, data: str, by_grid: dict[str, list[Run]], colors: dict[str, Any]) -> None:
    drawn = False
    solvers = set()
    for label, rs in by_grid.items():
        color = colors.get(label, "black")
        for s, r in enumerate(rs):
            a = r["adaptive"]
            if a and len(a["step_sizes"]) > 1:  # the last step, clipped at T, is not drawn
                solvers.add(a["solver"])
                _step_line(ax, a["step_starts"][:-1], a["step_sizes"][:-1], color=color, linewidth=1.4, alpha=0.8,
                           label=f"{label}: {a['solver']} steps" if s == 0 else None)
                drawn = True
            own = _final_h(r) if r["block"] == "learned_steps" else None
            if own:
                starts = list(np.cumsum(own) - np.asarray(own))
                _step_line(ax, starts, own, color=color, linewidth=1.0, linestyle=":", alpha=0.9,
                           label=f"{label}: learned h_k" if s == 0 else None)
                drawn = True
    if not drawn:
        ax.set_visible(False)
        return
    ax.set_yscale("log")
    ax.set_xlabel("time t in [0, T] (depth)")
    ax.set_ylabel("step size (log scale)")
    ax.set_title(f"{data}: {'/'.join(sorted(solvers)) or 'adaptive'} accepted steps on each trained field\n"
                 "(one line per seed; the last step, clipped at T, not drawn)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _plot_speeds(ax: Any, data: str, by_grid: dict[str, list[Run]], colors: dict[str, Any]) -> None:
    drawn = False
    for label, rs in by_grid.items():
        for s, r in enumerate(rs):
            v, h = r["speeds"], _own_h(r)
            if not v or not h or len(v) != len(h):
                continue
            t = np.cumsum(h) - np.asarray(h)
            ax.plot(t, v, marker="o", markersize=2.5, color=colors.get(label, "black"), alpha=0.8,
                    label=label if s == 0 else None)
            drawn = True
    if not drawn:
        ax.set_visible(False)
        return
    ax.set_yscale("log")
    ax.set_xlabel("t_k (start of step k)")
    ax.set_ylabel("‖F(t_k, x_k)‖ (mean over points, log scale)")
    ax.set_title(f"{data}: speed of the trajectory along the trained stack\n(one line per seed)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
