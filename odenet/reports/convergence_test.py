"""The convergence test (Queiruga et al. 2020): how a trained model's accuracy moves as the test solver is refined.

Works on the rows of :func:`odenet.reports.collect` (one per trained model x evaluation). For each trained
model it compares every fixed-step evaluation (euler / rk4 at N = 1..64) and the adaptive reference
(dopri5) with the model's own training solver, *paired by seed*: the change in accuracy of one trained
network is free of the seed-to-seed spread that dominates absolute accuracies on a small test set.

Registered when :mod:`odenet.reports` is imported: the section "Convergence test: accuracy as the test solver
is refined" (:func:`refinement_tables`) and ``refinement.png`` (:func:`plot_refinement`: absolute accuracy
and paired change vs test steps, dopri5 as dashed lines), for sweeps that test every trained model on one
refinement ladder of step counts (:func:`refinement_ladders`, e.g. ``conf/evaluation/refinement.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from .chance import label_mark_rows, withheld_line, withhold_rows
from .collect import ReportContext, Row
from .markdown import model_label
from .registry import Section, register_plot, register_section
from .stats import Stats, adaptive_eval, group, model_key, ok, setting_keys, sort_key, stats
from .step_size_ablation import TOLERANCE, solver_order

__all__ = ["paired_changes", "plot_refinement", "refinement_ladders", "refinement_section", "refinement_tables",
           "refinement_verdicts"]

#: Fewest test step counts of a refinement ladder.
MIN_LADDER = 3


def refinement_ladders(rows: Sequence[Row]) -> dict[str, list[int]]:
    """Fixed-step test solver -> the step counts every trained run was tested at, for the solvers whose counts
    form one ladder (at least :data:`MIN_LADDER` counts, a constant ratio between neighbours: 1, 2, 4, ...) shared
    by all runs with an evaluation under their training solver.

    Empty for sweeps that scale the test steps with the training step (step factors) or test a few counts only:
    the convergence test compares every trained model on the same refinement of the test solver.
    """
    own = {r["run_dir"] for r in rows if ok(r) and r["is_train_solver"]}
    per_solver: dict[str, dict[str, set[int]]] = {}
    for r in rows:
        if r["run_dir"] in own and ok(r) and r["test_steps"] is not None and not adaptive_eval(r):
            per_solver.setdefault(str(r["test_solver"]), {}).setdefault(r["run_dir"], set()).add(int(r["test_steps"]))
    ladders = {}
    for solver, by_run in per_solver.items():
        counts = {frozenset(steps) for steps in by_run.values()}
        if len(by_run) != len(own) or len(counts) != 1:
            continue
        steps = sorted(next(iter(counts)))
        ratios = {b / a for a, b in zip(steps, steps[1:])}
        if len(steps) >= MIN_LADDER and len(ratios) == 1:
            ladders[solver] = steps
    return ladders


Cells = dict[tuple[str, "int | None"], list[tuple[float, float]]]


def paired_changes(rows: Sequence[Row]) -> dict[tuple[Any, ...], Cells]:
    """``{model: {(test solver, N or None): [(accuracy, accuracy - own accuracy), ...one per seed]}}``.

    "own accuracy" is the run's accuracy under its training solver; ``N`` is None for adaptive solvers.
    Runs without an ok training-solver evaluation are left out.
    """
    settings = setting_keys(rows)
    out: dict[tuple[Any, ...], Cells] = {}
    for run_rows in group((r for r in rows if ok(r)), lambda r: r["run_dir"]).values():
        own = [r for r in run_rows if r["is_train_solver"]]
        if not own:
            continue
        base = float(own[0]["accuracy"])
        cells = out.setdefault(model_key(own[0], settings), {})
        references = [r for r in run_rows if adaptive_eval(r)]
        for r in run_rows:
            reference = adaptive_eval(r)  # dopri5
            if r["test_steps"] is None and not reference:
                continue  # a fixed grid given by step size only: not part of this test
            if reference and r["is_train_solver"] and len(references) > 1:
                continue  # an adaptively trained model: its reference is the tight evaluation, one cell per seed
            key = (str(r["test_solver"]), None if reference else int(r["test_steps"]))
            cells.setdefault(key, []).append((float(r["accuracy"]), float(r["accuracy"]) - base))
    return out


def _pct(s: Stats | None, signed: bool = False) -> str:
    if s is None:
        return "–"
    value = round(100 * s.mean, 1) + 0.0  # + 0.0: no "-0.0"
    mean = f"{value:+.1f}" if signed else f"{value:.1f}"
    return mean if s.std is None else f"{mean} ± {100 * s.std:.1f}"


def refinement_tables(rows: Sequence[Row]) -> str:
    """Markdown: per trained model, accuracy (%) and paired change (points) for every test solver and N."""
    settings = setting_keys(rows)
    data = paired_changes(rows)
    lines = [
        "Accuracy in %, mean ± sample std over seeds; change = accuracy − the same network's accuracy under its "
        "training solver (percentage points, paired by seed).",
        "",
    ]
    verdicts = dict(refinement_verdicts(rows))
    for m in sorted(data, key=sort_key):
        cells = data[m]
        n_seeds = max(len(v) for v in cells.values())
        own = [r for r in rows if ok(r) and r["is_train_solver"] and model_key(r, settings) == m]
        lines += [f"### Trained with {model_label(m, settings)} ({n_seeds} seeds){label_mark_rows(own)}", ""]
        solvers = sorted({k[0] for k in cells if k[1] is not None})
        steps = sorted({k[1] for k in cells if k[1] is not None})
        header = ["test solver", "", *(f"N={n}" for n in steps)]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for s in solvers:
            for what, idx, signed in (("accuracy", 0, False), ("change", 1, True)):
                vals = [_pct(stats(v[idx] for v in cells.get((s, n), [])), signed) for n in steps]
                lines.append(f"| {s} | {what} | " + " | ".join(vals) + " |")
        for k in sorted(k for k in cells if k[1] is None):
            acc = _pct(stats(v[0] for v in cells[k]))
            change = _pct(stats(v[1] for v in cells[k]), signed=True)
            lines += ["", f"{k[0]} (adaptive reference): accuracy {acc}, change {change}."]
        if m in verdicts:
            lines += ["", verdicts[m]]
        lines.append("")
    return "\n".join(lines)


def _finer(model: tuple[Any, ...], key: tuple[str, int | None]) -> bool:
    """A test solver at least as accurate as the model's training solver: the adaptive reference, or a fixed scheme
    of at least the training order with at least the training steps (the training solver itself excluded)."""
    solver, steps = key
    if steps is None:
        return True
    train_solver, train_steps = model[0], model[1]
    train_order, order = solver_order(train_solver), solver_order(solver)
    if train_order is None or order is None or not train_steps:
        return False
    return order >= train_order and steps >= train_steps and (order > train_order or steps > train_steps)


def refinement_verdicts(rows: Sequence[Row], tolerance: float = TOLERANCE) -> list[tuple[tuple[Any, ...], str]]:
    """``(model, verdict line)`` per fixed-step trained model: *invariant under refinement* when the seed-mean
    paired change under every finer test solver (:func:`_finer`) is within ``tolerance``, else the finer solver
    that moves it most. Withheld (:mod:`odenet.reports.chance`) when some of the model's runs are at chance."""
    settings = setting_keys(rows)
    out = []
    for m, cells in sorted(paired_changes(rows).items(), key=lambda kv: sort_key(kv[0])):
        changes = {k: stats(v[1] for v in vals) for k, vals in cells.items() if _finer(m, k)}
        changes = {k: s for k, s in changes.items() if s is not None}
        if not changes:
            continue
        label = model_label(m, settings)
        own = [r for r in rows if ok(r) and r["is_train_solver"] and model_key(r, settings) == m]
        withheld = withhold_rows(own)
        if withheld is not None:
            out.append((m, withheld_line(f"Convergence test ({label})", withheld)))
            continue
        worst = max(changes, key=lambda k: (abs(changes[k].mean), sort_key(k)))
        name = f"{worst[0]} N={worst[1]}" if worst[1] is not None else f"{worst[0]} (adaptive)"
        change = f"{100 * changes[worst].mean + 0.0:+.1f}"
        if abs(changes[worst].mean) <= tolerance + 1e-12:
            text = (f"**Convergence test ({label}): invariant under refinement** — every finer test solver within "
                    f"{100 * tolerance:g} point (largest change {change} points, {name}).")
        else:
            text = (f"**Convergence test ({label}): not invariant under refinement** — {name} changes the accuracy by "
                    f"{change} points.")
        out.append((m, text))
    return out


def plot_refinement(rows: list[Row]) -> Figure | None:
    """Accuracy (top) and paired change in accuracy (bottom) vs test steps, one column per fixed-step test solver."""
    settings = setting_keys(rows)
    data = paired_changes(rows)
    solvers = sorted({k[0] for cells in data.values() for k in cells if k[1] is not None})
    if not solvers or not any(len({k[1] for k in cells if k[1] is not None}) > 1 for cells in data.values()):
        return None
    models = sorted(data, key=sort_key)
    cmap = colormaps["tab10"]
    color = {m: cmap(i % 10) for i, m in enumerate(models)}
    fig = Figure(figsize=(5.2 * len(solvers) + 2.6, 7.4), layout="constrained")
    axes = fig.subplots(2, len(solvers), squeeze=False, sharex=True, sharey="row")
    all_steps: set[int] = set()
    for col, solver in enumerate(solvers):
        for row_i, (idx, ylabel) in enumerate(
            ((0, "test accuracy (%)"), (1, "change vs own training solver\n(percentage points, paired by seed)"))
        ):
            ax = axes[row_i][col]
            for m in models:
                cells = data[m]
                steps = sorted(n for s, n in cells if s == solver and n is not None)
                if not steps:
                    continue
                all_steps.update(steps)
                per_n = {n: [v[idx] * 100 for v in cells[(solver, n)]] for n in steps}
                means = [sum(v) / len(v) for v in per_n.values()]
                ax.plot(steps, means, marker="o", color=color[m], linewidth=2, label=model_label(m, settings))
                n_seeds = max(len(v) for v in per_n.values())
                for j in range(n_seeds):  # each seed as a thin line
                    pts = [(n, per_n[n][j]) for n in steps if j < len(per_n[n])]
                    ax.plot(*zip(*pts), color=color[m], linewidth=0.7, alpha=0.35)
                for (s, n), vals in cells.items():
                    if n is None:
                        ref = sum(v[idx] for v in vals) / len(vals) * 100
                        ax.axhline(ref, color=color[m], linestyle="--", linewidth=1.3,
                                   label=f"{model_label(m, settings)}: {s} (reference)")
                own = [r for r in rows if ok(r) and r["is_train_solver"] and model_key(r, settings) == m
                       and r["test_solver"] == solver and r["test_steps"] is not None]
                if own and idx == 0:
                    n0 = own[0]["test_steps"]
                    ax.plot([n0], [sum(per_n[n0]) / len(per_n[n0])], marker="*", markersize=15, color=color[m],
                            markeredgecolor="black", linestyle="none", zorder=5)
            if idx == 1:
                ax.axhline(0.0, color="black", linewidth=0.8)
                ax.set_xlabel("test steps N on [0, T] (log₂ scale)")
            if row_i == 0:
                ax.set_title(f"tested with {solver}", fontsize=11)
            if col == 0:
                ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_steps), [str(n) for n in sorted(all_steps)])
        ax.xaxis.set_minor_locator(NullLocator())
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    handles["training solver and steps"] = axes[0][0].plot(
        [], [], marker="*", markersize=12, color="grey", markeredgecolor="black", linestyle="none")[0]
    handles["single seeds"] = axes[0][0].plot([], [], color="grey", linewidth=0.7, alpha=0.5)[0]
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", title="trained model",
               fontsize=8, title_fontsize=9)
    fig.suptitle("Convergence test: accuracy as the test solver is refined\n"
                 "(thick: mean over seeds; dashed: adaptive reference solver)", fontsize=11)
    return fig


@register_section("convergence test")
def refinement_section(ctx: ReportContext) -> list[str] | None:
    """Report section: :func:`refinement_tables` (None unless the runs share a refinement ladder)."""
    if not refinement_ladders(ctx.rows) or not paired_changes(ctx.rows):
        return None
    lines = ["## Convergence test: accuracy as the test solver is refined", ""]
    lines += refinement_tables(ctx.rows).split("\n")
    return Section(lines, [text for _, text in refinement_verdicts(ctx.rows)])


@register_plot("refinement.png")
def refinement_plot(ctx: ReportContext) -> Figure | None:
    """:func:`plot_refinement` (None unless the runs share a refinement ladder)."""
    return plot_refinement(ctx.rows) if refinement_ladders(ctx.rows) else None
