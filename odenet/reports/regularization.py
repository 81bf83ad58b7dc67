"""Report sections and plot for the ``regularization`` experiment (Finlay et al. 2020): do kinetic-energy and
Jacobian penalties give fewer NFE at the same accuracy? Also the NFE over training of any adaptive sweep
(``augmentation``'s NODE and ANODE).

Registered when :mod:`odenet.reports` is imported:

* "Dynamics: accuracy and NFE" (``nfe_over_training.png``): for sweeps holding a model trained through an
  adaptive solver or with a penalty. Per data set and model (mean ± std over seeds): test accuracy, NFE per
  training iteration forward and backward (adjoint) — over the whole training and over its last tenth — and the
  trained model's test NFE, from each run's ``history.csv`` and ``metrics.json``.
* "Kinetic energy and Jacobian after training": for sweeps holding a penalised run; every ODE model is reloaded
  and ``int ||F||^2 dt`` and ``int ||dF/dx||_F^2 dt`` (Hutchinson) are measured on the test inputs, penalised
  or not (:func:`measure_penalties`).

Each returns ``None`` when the sweep holds none of its data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..blocks import ODEBlock, ResidualStack
from .chance import label_mark, mark_cell, value_at_chance, withheld_section
from .collect import ReportContext
from .figures import legend_union
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import Run, by_data_and_label, configured_runs, run_dataset
from .stats import mean_std, paired, paired_text

LOSS_THRESHOLD = 0.01  # "iterations to loss below": the training task loss (window mean of history.csv)
PENALTY_POINTS = 1000  # test inputs on which measure_penalties runs


# ---------------------------------------------------------------------------------------------- history.csv


def _column(history: list[dict[str, str]], name: str) -> np.ndarray:
    """``history.csv`` column ``name`` as floats (NaN where empty or missing)."""
    out = []
    for row in history:
        try:
            out.append(float(row.get(name) or "nan"))
        except ValueError:
            out.append(float("nan"))
    return np.asarray(out, dtype=float)


def history_means(history: list[dict[str, str]], name: str, tail: float = 0.1) -> tuple[float, float] | None:
    """Mean of column ``name`` over all logged iterations, and over the last ``tail`` fraction of them."""
    values = _column(history, name)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    k = max(1, math.ceil(tail * len(values)))
    return float(values.mean()), float(values[-k:].mean())


def first_below(history: list[dict[str, str]], name: str, threshold: float) -> int | None:
    """The first logged iteration whose ``name`` is below ``threshold`` (None: never)."""
    for it, value in zip(_column(history, "iteration"), _column(history, name)):
        if value < threshold:
            return int(it)
    return None


def mean_curve(
    histories: Sequence[list[dict[str, str]]], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(iterations, mean, (min, max))`` of column ``name`` over runs, at the iterations every run logged."""
    series = []
    for h in histories:
        it, v = _column(h, "iteration"), _column(h, name)
        ok = np.isfinite(it) & np.isfinite(v)
        if ok.any():
            series.append(dict(zip(it[ok].astype(int).tolist(), v[ok].tolist())))
    if not series:
        return None
    common = sorted(set.intersection(*(set(s) for s in series)))
    if not common:
        return None
    values = np.asarray([[s[i] for i in common] for s in series], dtype=float)
    return np.asarray(common), values.mean(axis=0), np.stack([values.min(axis=0), values.max(axis=0)])


# ---------------------------------------------------------------------------------------------- NFE and accuracy


def _dynamics_runs(ctx: ReportContext) -> list[Run] | None:
    runs = [r for r in configured_runs(ctx) if r.history]
    if not any(r.adaptive or r.penalised for r in runs):
        return None
    return runs


def _tight_eval(run: Run) -> dict[str, Any] | None:
    """The evaluation with an adaptive solver that is not the training one (e.g. dopri5 at rtol 1e-6)."""
    for ev in run.evaluations():
        if not ev.get("is_train_solver") and ev.get("rtol") is not None and ev.get("status") == "ok":
            return ev
    return None


@register_section("dynamics")
def dynamics_section(ctx: ReportContext) -> list[str] | None:
    """Accuracy and NFE (training forward / backward, test) per data set and model, mean ± std over seeds."""
    runs = _dynamics_runs(ctx)
    if runs is None:
        return None
    lines = [
        "## Dynamics: accuracy and NFE",
        "",
        "Mean ± sample std over seeds; train accuracy and loss: the final model on the whole training set. "
        "NFE per training iteration: field evaluations of the logged iterations' "
        "forward solve (and backward solve: adjoint only; backprop through the solver has none), averaged over the "
        "whole training and over its last 10 % (`history.csv`; a penalised block integrates the penalties with the "
        "state, under the same error control). Iterations to loss < 0.01: the first logged iteration whose training "
        "task loss (window mean) is below it. Test NFE: per forward of the trained model (eval mode, no "
        "penalties) under its training solver, and under the tight evaluation solver where there is one.",
        "",
    ]
    for data, by_label in by_data_and_label(runs).items():
        backward = any(np.nansum(_column(r.history, "nfe_backward")) > 0 for rs in by_label.values() for r in rs)
        tight = next((ev for rs in by_label.values() for r in rs if (ev := _tight_eval(r))), None)
        penalties = [p for p in ("kinetic", "jacobian") if any(p in r.history[0] for rs in by_label.values()
                                                                for r in rs)]
        header = ["model", "seeds", "test acc.", "train acc.", "train loss", "NFE fwd: mean", "NFE fwd: last 10 %"]
        if backward:
            header += ["NFE bwd: mean", "NFE bwd: last 10 %"]
        header += ["test NFE", f"iter. to loss < {LOSS_THRESHOLD:g}"]
        if tight:
            header += [f"test acc. ({tight['test_solver']} rtol {tight['rtol']:g})", "its NFE"]
        header += [f"{p} (last 10 %)" for p in penalties] + ["train s"]
        body = []
        for label, rs in by_label.items():
            fwd = [history_means(r.history, "nfe_forward") for r in rs]
            acc = [r.train_eval().get("accuracy") for r in rs]
            cells = [label + label_mark(ctx, [r.run_dir for r in rs]), str(len(rs)),
                     mark_cell(mean_std(acc), value_at_chance(acc, [r.baseline for r in rs])),
                     mean_std([r.train.get("train_accuracy") for r in rs]),
                     mean_std([r.train.get("train_loss") for r in rs], "{:.3g}"),
                     mean_std([f[0] if f else None for f in fwd], "{:.1f}"),
                     mean_std([f[1] if f else None for f in fwd], "{:.1f}")]
            if backward:
                bwd = [history_means(r.history, "nfe_backward") for r in rs]
                cells += [mean_std([b[0] if b else None for b in bwd], "{:.1f}"),
                          mean_std([b[1] if b else None for b in bwd], "{:.1f}")]
            cells.append(mean_std([r.train_eval().get("nfe") for r in rs], "{:.1f}"))
            reached = [first_below(r.history, "loss", LOSS_THRESHOLD) for r in rs]
            cells.append(mean_std(reached, "{:.0f}") + (f" ({reached.count(None)} never)" if None in reached else ""))
            if tight:
                evs = [_tight_eval(r) or {} for r in rs]
                tight_acc = [e.get("accuracy") for e in evs]
                cells += [mark_cell(mean_std(tight_acc), value_at_chance(tight_acc, [r.baseline for r in rs])),
                          mean_std([e.get("nfe") for e in evs], "{:.0f}")]
            for p in penalties:
                means = [history_means(r.history, p) for r in rs]
                cells.append(mean_std([m[1] if m else None for m in means], "{:.3g}"))
            cells.append(mean_std([_column(r.history, "seconds")[-1] for r in rs], "{:.0f}"))
            body.append(cells)
        lines += [f"### {data}", "", *md_table(header, body)]
    return _withheld(ctx, lines, runs, "Accuracy and NFE compared across models")


def _paired_metrics(run: Run) -> dict[str, float | None]:
    """The per-run numbers that penalised and unpenalised models are compared on."""
    fwd = history_means(run.history, "nfe_forward")
    seconds = _column(run.history, "seconds")
    return {"test acc.": run.train_eval().get("accuracy"), "test NFE": run.train_eval().get("nfe"),
            "NFE at the tight solver": (_tight_eval(run) or {}).get("nfe"),
            "NFE fwd per iteration: mean": fwd[0] if fwd else None,
            "NFE fwd per iteration: last 10 %": fwd[1] if fwd else None,
            "train s": float(seconds[-1]) if len(seconds) else None}


@register_section("penalty_pairs")
def penalty_pairs_section(ctx: ReportContext) -> list[str] | None:
    """Penalised minus unpenalised model of each data set, paired by seed (sweeps holding both)."""
    runs = _dynamics_runs(ctx)
    if runs is None:
        return None
    lines = ["## Penalised minus unpenalised, paired by seed", "",
             "Per data set: each penalised model minus the unpenalised one trained with the same seed (mean ± sample "
             "std of the differences over seeds, and on how many seeds it is positive).", ""]
    found = False
    for data, by_label in by_data_and_label(runs).items():
        plain = [rs for rs in by_label.values() if not rs[0].penalised]
        if len(plain) != 1:
            continue
        base = {r.seed: _paired_metrics(r) for r in plain[0]}
        for label, rs in by_label.items():
            if not rs[0].penalised:
                continue
            found = True
            own = {r.seed: _paired_metrics(r) for r in rs}
            body = []
            for key in next(iter(own.values())):
                d = paired({k: v[key] for k, v in own.items()}, {k: v[key] for k, v in base.items()})
                body.append([key, str(len(d)), paired_text(d, "{:+.4f}" if key == "test acc." else "{:+.1f}")])
            lines += [f"### {data}: {label} − {plain[0][0].label}", "",
                      *md_table(["quantity", "seeds", "difference"], body)]
    return _withheld(ctx, lines, runs, "Penalised and unpenalised models compared") if found else None


def _withheld(ctx: ReportContext, lines: list[str], runs: Sequence[Run], what: str) -> list[str] | Section:
    """``lines``, with the line withholding the comparison ``what`` when some of ``runs`` are at chance."""
    return withheld_section(ctx, lines, what, [r.run_dir for r in runs])


@register_plot("nfe_over_training.png")
def nfe_over_training_plot(ctx: ReportContext) -> Figure | None:
    """NFE forward (and backward, adjoint) and training accuracy against iteration, one line per model."""
    runs = _dynamics_runs(ctx)
    if runs is None:
        return None
    groups = by_data_and_label(runs)
    backward = any(np.nansum(_column(r.history, "nfe_backward")) > 0 for r in runs)
    panels = ["nfe_forward", *(["nfe_backward"] if backward else []), "loss", "accuracy"]
    titles = {"nfe_forward": "NFE of the forward solve", "nfe_backward": "NFE of the backward (adjoint) solve",
              "loss": "training task loss (window mean)", "accuracy": "training accuracy (window mean)"}
    fig = Figure(figsize=(5.2 * len(panels) + 3.2, 3.9 * len(groups) + 0.8), layout="constrained")
    axes = fig.subplots(len(groups), len(panels), squeeze=False)
    cmap = colormaps["tab10"]
    labels = list(dict.fromkeys(label for g in groups.values() for label in g))
    for row_axes, (data, by_label) in zip(axes, groups.items()):
        for ax, name in zip(row_axes, panels):
            for label, rs in by_label.items():
                curve = mean_curve([r.history for r in rs], name)
                if curve is None or (name == "nfe_backward" and not np.nansum(curve[1]) > 0):
                    continue
                it, mean, (lo, hi) = curve
                color = cmap(labels.index(label) % 10)
                ax.plot(it, mean, color=color, linewidth=1.4, label=label)
                if len(rs) > 1:
                    ax.fill_between(it, lo, hi, color=color, alpha=0.15, linewidth=0)
            if name.startswith("nfe"):
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter("{x:g}")
                ax.yaxis.set_minor_formatter("{x:g}")
                ax.tick_params(axis="y", which="minor", labelsize=7)
            elif name == "loss":
                ax.set_yscale("log")
            ax.set_title(f"{data}: {titles[name]}", fontsize=10)
            ax.set_xlabel("training iteration")
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].set_ylabel("NFE per iteration (log scale)")
        row_axes[panels.index("loss")].set_ylabel("cross-entropy (log scale)")
    handles = legend_union(list(axes.flat))
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", title="model", fontsize=8,
               title_fontsize=9)
    fig.suptitle("Solver cost and accuracy over training (mean over seeds; band: min–max; NFE of the logged "
                 "iterations)", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------- penalties


def measure_penalties(model: torch.nn.Module, x: torch.Tensor, noise: str = "gaussian", seed: int = 0
                      ) -> dict[str, float]:
    """``kinetic`` (``int ||F||^2 dt``) and ``jacobian`` (Hutchinson ``int ||dF/dx||_F^2 dt``, one probe per
    sample) of ``model``'s block from ``model.stem(x)``, batch means, integrated by the block's own solver.

    The block is re-made around the same field with both penalties switched on and run once in training mode
    (that is when penalties are integrated); the model itself is left as it was.
    """
    block = model.block
    if isinstance(block, ResidualStack):
        probe = block.with_solver(block.scheme, steps=block.steps, regularizers=("kinetic", "jacobian"), noise=noise)
    elif isinstance(block, ODEBlock):
        probe = block.with_solver(block.solver, regularizers=("kinetic", "jacobian"), noise=noise,
                                  **({"step_size": block.step_size} if block.step_size else {}))
    else:
        raise ValueError(f"measure_penalties needs a ResidualStack or an ODEBlock, got {type(block).__name__}")
    was_training = model.training
    model.eval()
    probe.train()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            z = model.stem(x)
        with torch.enable_grad():
            probe(z)
            values = {k: float(v.detach()) for k, v in probe.regularization.items()}
    finally:
        torch.random.set_rng_state(state)
        model.train(was_training)
    return values


@register_section("penalties")
def penalties_section(ctx: ReportContext) -> list[str] | None:
    """Kinetic energy and Jacobian norm of every trained model, penalised or not, measured after training."""
    runs = [r for r in configured_runs(ctx) if r.train.get("block") != "plain"]
    if not any(r.penalised for r in runs):
        return None
    lines = [
        "## Kinetic energy and Jacobian after training",
        "",
        "Every trained model, penalised or not, re-run on (up to 1000) test inputs with both penalties integrated "
        "by its training solver: kinetic = ∫‖F(t, x(t))‖² dt, jacobian = ∫‖∂F/∂x‖²_F dt (Hutchinson, one "
        "Gaussian probe per sample, seed 0); batch means, mean ± std over seeds.",
        "",
    ]
    for data, by_label in by_data_and_label(runs).items():
        body = []
        for label, rs in by_label.items():
            measured = []
            for r in rs:
                x = run_dataset(ctx, r).x_test[:PENALTY_POINTS]
                measured.append(measure_penalties(r.model(), x))
            body.append([label + label_mark(ctx, [r.run_dir for r in rs]), str(len(rs)),
                         mean_std([m.get("kinetic") for m in measured], "{:.4g}"),
                         mean_std([m.get("jacobian") for m in measured], "{:.4g}")])
        lines += [f"### {data}", "", *md_table(["model", "seeds", "kinetic", "jacobian"], body)]
    return _withheld(ctx, lines, runs, "Kinetic energy and Jacobian compared across models")
