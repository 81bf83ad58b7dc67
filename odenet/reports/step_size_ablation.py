"""The step-size ablation of Ott et al. (ICLR 2021), "ResNet After All?": is a trained ResNet an ODE?

A model trained with a fixed-step scheme at step size ``h`` is *an ODE model* when re-integrating
its field with a finer solver leaves its accuracy unchanged. This module measures that:

* :func:`critical_step_sizes` — from summary rows (:func:`odenet.report.collect`): for every
  training step size, the largest accuracy gap between the training solver and any *finer* test
  solver (:func:`is_finer`), and the critical step size: the largest training ``h`` at which, and
  at every smaller trained ``h``, all finer solvers stay within ``tolerance`` (1 point) of it.
* :func:`step_factor_table` — accuracy per training ``N`` x test solver x step factor;
  :func:`fixed_grid_table` — adaptively trained models re-integrated with ``N`` fixed steps.
* :func:`step_jacobian_determinants` / :func:`fold_fraction` — ``det(dx_{k+1} / dx_k)`` along the
  trajectory of a :class:`~odenet.blocks.ResidualStack`. An ODE flow map has ``det =
  exp(int div F dt) > 0``; a step map with ``det <= 0`` somewhere (and ``> 0`` far away) folds the
  state space, so it is not injective: two distinct states land on the same point — trajectories
  cross, which no ODE flow can do.
* :func:`plane_figure` — decision regions in the input plane (under the training solver and under a
  fine solve of the same field), trajectories projected on the plane and the fold map, for models
  on 2-D inputs (a large-step model next to a small-step one).

Imported by :mod:`odenet.report` (it is in ``odenet.report.EXTENSIONS``), it adds "Critical step
size", "Step factors", "Adaptively trained models on a fixed grid" and "Folds of the step map"
sections to ``report.md`` and ``plane_large_vs_small_step.png`` to any report whose data fit them
(fixed-step training at two or more step sizes; 2-D inputs and saved models for the figure and the
folds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from omegaconf import OmegaConf
from torch import Tensor

from ..analysis.folds import fold_fraction, fold_mask, predict, step_jacobian_determinants
from ..blocks import ResidualStack, SolverError
from ..data import Dataset, load_dataset
from ..models import Classifier
from ..solvers import SCHEMES, is_adaptive
from . import core as report

Row = dict[str, Any]

#: One accuracy point: the largest gap between training and finer solver at which a step size passes.
TOLERANCE = 0.01
#: The step factors of ``conf/evaluation/step_factors.yaml``: test step = factor x training step.
STEP_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
PLANE_PLOT = "plane_large_vs_small_step.png"


# ----------------------------------------------------------------------------------------------
# Which test solvers are finer than the training solver


def solver_order(name: str | None) -> int | None:
    """Convergence order of a fixed-step scheme (``euler`` 1, ``midpoint`` 2, ``rk4`` 4); None otherwise."""
    tableau = SCHEMES.get(str(name))
    return tableau.order if tableau is not None else None


def is_adaptive_row(row: Row) -> bool:
    """The evaluation used an error-controlled solver (no fixed step count)."""
    return row["test_steps"] is None and row["test_step_size"] is None


def is_finer(row: Row) -> bool:
    """Whether the row's test solver integrates the field at least as accurately as the training one.

    Finer: an adaptive test solver (dopri5 at a tight tolerance), or a fixed scheme of at least the
    training scheme's order at a step no larger than the training step, other than the training
    solver itself (euler at h/2, midpoint or rk4 at h, rk4 at h/2, ...). Rows of models trained
    with an adaptive solver are never compared (they have no training step size).
    """
    if row["is_train_solver"] or row["train_step_size"] is None:
        return False
    if is_adaptive_row(row) or is_adaptive(str(row["test_solver"])):
        return True
    train_order, test_order = solver_order(row["train_solver"]), solver_order(row["test_solver"])
    if train_order is None or test_order is None or row["test_step_size"] is None:
        return False
    h_train, h_test = float(row["train_step_size"]), float(row["test_step_size"])
    not_larger = h_test <= h_train * (1 + 1e-9)
    strictly_finer = test_order > train_order or h_test < h_train * (1 - 1e-9)
    return test_order >= train_order and not_larger and strictly_finer


# ----------------------------------------------------------------------------------------------
# Critical step size


@dataclass(frozen=True)
class StepCheck:
    """One training step size: its own accuracy and the finer test solver farthest from it."""

    train_solver: str
    train_steps: int | None
    step_size: float
    train_accuracy: float  # mean over seeds, under the training solver
    worst_solver: str | None  # label of the finer evaluation with the largest |gap|; None: no finer evaluation
    worst_accuracy: float | None  # its mean accuracy over seeds
    gap: float | None  # mean over seeds of (worst finer accuracy - training accuracy), signed
    seeds: int  # seeds with a training accuracy and at least one finer evaluation
    seeds_within: int  # of those, seeds whose every finer evaluation is within the tolerance
    failed: int  # finer evaluations that failed (left out of the gap)
    within: bool  # |gap| <= tolerance


@dataclass(frozen=True)
class CriticalStepSize:
    """The checks of one fixed-step training solver (and swept setting), smallest step size first."""

    train_solver: str
    setting: str  # further swept settings of these models ("" when none)
    tolerance: float
    checks: tuple[StepCheck, ...]

    @property
    def critical(self) -> float | None:
        """Largest ``h`` such that it and every smaller trained ``h`` pass; None if the smallest fails."""
        best = None
        for check in self.checks:
            if not check.within:
                break
            best = check.step_size
        return best

    @property
    def largest_within(self) -> float | None:
        """Largest trained ``h`` that passes, whatever smaller ones do (the literal reading)."""
        passing = [c.step_size for c in self.checks if c.within]
        return max(passing) if passing else None


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals))


def critical_step_sizes(rows: Sequence[Row], tolerance: float = TOLERANCE) -> list[CriticalStepSize]:
    """Critical step size per fixed-step training solver (and further swept setting) in ``rows``.

    For each trained step size ``h``: the training accuracy (the training solver at ``h``) and, for
    every finer evaluation (:func:`is_finer`), the mean over seeds of its accuracy minus the
    training accuracy of the same seed. ``h`` passes when every such mean gap is within
    ``tolerance`` in absolute value. Solvers with a single trained step size, or no finer
    evaluation anywhere, are left out. Accuracies are fractions (``tolerance=0.01``: one point).
    """
    settings = report.setting_keys(rows)
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None and r["train_step_size"] is not None]
    families: dict[tuple[Any, ...], list[Row]] = {}
    for r in ok:
        families.setdefault((r["train_solver"], tuple(r[k] for k in settings)), []).append(r)
    results = []
    for (train_solver, extra), family in sorted(families.items(), key=lambda kv: report._sort_key(kv[0])):
        by_h: dict[float, list[Row]] = {}
        for r in family:
            by_h.setdefault(float(r["train_step_size"]), []).append(r)
        if len(by_h) < 2:
            continue
        checks = [c for h in sorted(by_h) if (c := _check(train_solver, h, by_h[h], rows, tolerance)) is not None]
        if not any(c.worst_solver is not None for c in checks):
            continue
        setting = ", ".join(f"{k}={report._fmt(v)}" for k, v in zip(settings, extra))
        results.append(CriticalStepSize(str(train_solver), setting, tolerance, tuple(checks)))
    return results


def _check(train_solver: str, h: float, rows: list[Row], all_rows: Sequence[Row], tolerance: float) -> StepCheck | None:
    train = {r["seed"]: float(r["accuracy"]) for r in rows if r["is_train_solver"]}
    if not train:
        return None
    finer: dict[tuple[Any, ...], dict[Any, float]] = {}
    for r in rows:
        if is_finer(r) and r["seed"] in train:
            finer.setdefault(report.eval_key(r), {})[r["seed"]] = float(r["accuracy"])
    run_dirs = {r["run_dir"] for r in rows}
    failed = sum(
        1
        for r in all_rows
        if r["run_dir"] in run_dirs and r["status"] != "ok" and r["test_solver"] is not None and is_finer(r)
    )
    steps = next((r["train_steps"] for r in rows), None)
    train_mean = _mean(train.values())
    if not finer:
        return StepCheck(train_solver, steps, h, train_mean, None, None, None, len(train), len(train), failed, True)
    gaps = {key: _mean(acc - train[s] for s, acc in per_seed.items()) for key, per_seed in finer.items()}
    worst = max(gaps, key=lambda k: (abs(gaps[k]), report._sort_key(k)))
    seeds = sorted({s for per_seed in finer.values() for s in per_seed}, key=report._sort_value)
    seeds_within = sum(
        1
        for s in seeds
        if all(abs(per_seed[s] - train[s]) <= tolerance for per_seed in finer.values() if s in per_seed)
    )
    return StepCheck(
        train_solver=train_solver,
        train_steps=steps,
        step_size=h,
        train_accuracy=train_mean,
        worst_solver=report.eval_label(worst),
        worst_accuracy=_mean(finer[worst].values()),
        gap=gaps[worst],
        seeds=len(seeds),
        seeds_within=seeds_within,
        failed=failed,
        within=abs(gaps[worst]) <= tolerance + 1e-12,
    )


def _h_text(h: float | None, steps: int | None = None) -> str:
    if h is None:
        return "none"
    return f"h = {report.fmt_h(h)}" + (f" (N = {steps})" if steps else "")


def critical_step_markdown(results: Sequence[CriticalStepSize]) -> list[str]:
    """Markdown: the per-step-size table and the critical step size of each training solver."""
    if not results:
        return []
    tol_points = results[0].tolerance * 100
    lines = [
        "## Critical step size",
        "",
        f"A training step size h passes when the seed-mean accuracy under every *finer* test solver (a "
        f"scheme of at least the training order at a step no larger than h, or an adaptive solver) is within "
        f"{tol_points:g} point(s) of the training solver's; gap = finer - training accuracy of the same seed, "
        "mean over seeds, for the finer solver farthest from it. The critical step size is the largest h at "
        "which that h and every smaller trained h pass.",
        "",
    ]
    for res in results:
        title = f"trained with {res.train_solver}" + (f", {res.setting}" if res.setting else "")
        body = []
        for c in res.checks:
            body.append(
                [
                    report.fmt_h(c.step_size),
                    report._fmt(c.train_steps),
                    f"{c.train_accuracy:.4f}",
                    c.worst_solver or "–",
                    f"{c.worst_accuracy:.4f}" if c.worst_accuracy is not None else "–",
                    f"{100 * c.gap:+.1f}" if c.gap is not None else "–",
                    f"{c.seeds_within}/{c.seeds}",
                    ("yes" if c.within else "**no**") + (f" ({c.failed} failed)" if c.failed else ""),
                ]
            )
        lines += [f"### {title.capitalize()}", ""]
        lines += report._md_table(
            ["h", "N", "training acc.", "farthest finer solver", "its acc.", "gap (points)", "seeds within", "passes"],
            body,
        )
        steps_of = {c.step_size: c.train_steps for c in res.checks}
        crit = res.critical
        if crit is None:
            text = f"**Critical step size ({title}): none** — even the smallest trained h fails."
        elif crit == max(steps_of):
            text = (
                f"**Critical step size ({title}): {_h_text(crit, steps_of[crit])} or larger** — every trained h passes."
            )
        else:
            text = f"**Critical step size ({title}): {_h_text(crit, steps_of[crit])}.**"
        literal = res.largest_within
        if literal is not None and literal != crit:
            text += f" (The largest passing h is {report.fmt_h(literal)}, but a smaller h fails.)"
        lines += [text, ""]
    return lines


@report.register_section("critical step size")
def critical_step_section(rows: list[Row], root: Path) -> list[str] | None:
    """Report section: :func:`critical_step_markdown` of ``rows`` (None when no solver has two step sizes)."""
    return critical_step_markdown(critical_step_sizes(rows)) or None


# ----------------------------------------------------------------------------------------------
# Accuracy per step factor


def _cell(values: list[float]) -> str:
    return report._fmt_stats(report.stats(values), 3)


def step_factor_table(rows: Sequence[Row], factors: Sequence[float] = STEP_FACTORS) -> list[str]:
    """Markdown tables, one per fixed-step test solver: training model x step factor, mean ± std accuracy.

    A cell holds the evaluations with ``test_steps == max(1, round(N / factor))`` (as
    ``conf/evaluation/step_factors.yaml`` makes them) of the models trained with ``N`` fixed steps;
    the test steps are given in brackets. Empty when no solver has two matching cells.
    """
    fixed = [
        r
        for r in rows
        if r["status"] == "ok" and r["accuracy"] is not None and r["test_steps"] is not None and r["train_steps"]
    ]
    grid = sorted({int(r["train_steps"]) for r in fixed})
    solvers = sorted({r["test_solver"] for r in fixed}, key=lambda s: (solver_order(s) or 99, s))
    lines: list[str] = []
    for solver in solvers:
        body = []
        for n in grid:
            cells = []
            for f in factors:
                steps = max(1, round(n / f))
                vals = [r["accuracy"] for r in fixed if r["train_steps"] == n and r["test_solver"] == solver
                        and r["test_steps"] == steps]  # fmt: skip
                cells.append(f"{_cell(vals)} ({steps})" if vals else "–")
            if any(c != "–" for c in cells):
                train_solver = next(r["train_solver"] for r in fixed if r["train_steps"] == n)
                body.append([f"{train_solver} N={n} (h={report.fmt_h(1 / n)})", *cells])
        if sum(c != "–" for row in body for c in row[1:]) < 2:
            continue
        header = ["trained model", *(f"{f:g} h" for f in factors)]
        lines += [f"### Tested with {solver}", ""] + report._md_table(header, body)
    if not lines:
        return []
    intro = (
        "Accuracy (mean ± sample std over seeds) with the test step = factor x the training step h "
        "(factor < 1: finer); in brackets the test steps round(N / factor)."
    )
    return ["## Step factors", "", intro, "", *lines]


def fixed_grid_table(rows: Sequence[Row]) -> list[str]:
    """Markdown: models trained with an adaptive solver, tested with fixed-step schemes at N steps.

    One table per adaptive training solver: a row per fixed-step test solver, a column per test
    step count, mean ± std accuracy over seeds. Empty when there is no such evaluation.
    """
    adaptive = [
        r
        for r in rows
        if r["status"] == "ok" and r["accuracy"] is not None and r["train_solver"] is not None
        and r["train_steps"] is None and r["train_step_size"] is None and r["test_steps"] is not None
    ]  # fmt: skip
    lines: list[str] = []
    for train_solver in sorted({r["train_solver"] for r in adaptive}, key=str):
        mine = [r for r in adaptive if r["train_solver"] == train_solver]
        steps = sorted({int(r["test_steps"]) for r in mine})
        solvers = sorted({r["test_solver"] for r in mine}, key=lambda s: (solver_order(s) or 99, s))
        body = [
            [solver, *(_cell([r["accuracy"] for r in mine if r["test_solver"] == solver and r["test_steps"] == n])
                       for n in steps)]
            for solver in solvers
        ]  # fmt: skip
        lines += [f"### Trained with {train_solver} (adaptive)", ""]
        lines += report._md_table(["test solver", *(f"N={n} (h={report.fmt_h(1 / n)})" for n in steps)], body)
    if not lines:
        return []
    intro = "Accuracy (mean ± sample std over seeds) of adaptively trained models re-integrated with N fixed steps."
    return ["## Adaptively trained models on a fixed grid", "", intro, "", *lines]


@report.register_section("step factors")
def step_factor_section(rows: list[Row], root: Path) -> list[str] | None:
    """Report section: :func:`step_factor_table` and :func:`fixed_grid_table` (None when both are empty)."""
    return step_factor_table(rows) + fixed_grid_table(rows) or None


# ----------------------------------------------------------------------------------------------
# Folds of the step map


# ----------------------------------------------------------------------------------------------
# Pictures in the plane


@dataclass
class PlaneModel:
    """A trained model on 2-D inputs with the label it gets in a figure (e.g. ``euler h=1/2, seed 0``)."""

    label: str
    model: Classifier


def _grid(lim: float, resolution: int) -> tuple[np.ndarray, np.ndarray, Tensor]:
    axis = np.linspace(-lim, lim, resolution)
    gx, gy = np.meshgrid(axis, axis)
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    return gx, gy, pts


def _fine_model(model: Classifier, steps: int) -> tuple[Classifier, str]:
    return model.with_solver("rk4", steps=steps), f"rk4, {steps} steps"


def plane_figure(
    models: Sequence[PlaneModel],
    x: Tensor,
    y: Tensor,
    resolution: int = 120,
    trajectories: int = 12,
    folded: int = 4,
    fine_steps: int = 256,
    view: float = 4.0,
    title: str | None = None,
) -> Figure:
    """One row per model: decision regions (training solver; a fine rk4 solve), trajectories, fold map.

    ``x`` ``(n, 2)`` and ``y`` ``(n,)`` are test points drawn over the regions. The trajectory panel
    draws ``trajectories`` random test points per class, plus up to ``folded`` points whose trajectory
    meets a fold (dashed), projected on the first two state coordinates (the input plane: augmented
    coordinates start at 0), in a window of ``view`` x the data's extent (states may leave it). The
    fold map shows ``min_k det(d x_{k+1} / d x_k)`` over the plane: where it is ``<= 0`` the step map
    folds, so trajectories cross. Models whose block is not a ``ResidualStack`` get decision regions
    only. The fine solve is rk4 with ``max(fine_steps, 4 N)`` steps.
    """
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"plane_figure needs 2-D inputs (n, 2), got {tuple(x.shape)}")
    if not models:
        raise ValueError("plane_figure needs at least one model")
    lim = 1.15 * float(x.abs().max())
    gx, gy, grid = _grid(lim, resolution)
    classes = sorted(int(c) for c in torch.unique(y))
    class_colors = {c: colormaps["tab10"](i) for i, c in enumerate(classes)}
    region_cmap = ListedColormap([(*class_colors[c][:3], 0.28) for c in classes])
    fig = Figure(figsize=(17.0, 4.0 * len(models) + 0.9), layout="constrained")
    axes = fig.subplots(len(models), 4, squeeze=False)
    gen = torch.Generator().manual_seed(0)
    per_class = [(y == c).nonzero()[:, 0] for c in classes]
    sample = torch.cat([idx[torch.randperm(len(idx), generator=gen)[:trajectories]] for idx in per_class])
    for row, pm in zip(axes, models):
        model = pm.model
        steps = model.block.steps if isinstance(model.block, ResidualStack) else None
        own = f"{model.block.scheme}, {steps} steps" if steps else "training solver"
        fine, fine_label = _fine_model(model, max(fine_steps, 4 * (steps or 0)))
        for ax, m, how in ((row[0], model, own), (row[1], fine, fine_label)):
            try:
                pred = predict(m, grid).reshape(gx.shape).numpy()
                acc = float((predict(m, x) == y).float().mean())
                ax.pcolormesh(gx, gy, np.searchsorted(classes, pred), cmap=region_cmap, shading="auto",
                              vmin=-0.5, vmax=len(classes) - 0.5, rasterized=True)  # fmt: skip
                subtitle = f"test accuracy {100 * acc:.1f}%"
            except SolverError as err:  # pragma: no cover - rk4 never fails; kept for other fine solvers
                subtitle = f"failed: {err}"
            for c in classes:
                sel = y == c
                ax.scatter(x[sel, 0], x[sel, 1], s=2, color=class_colors[c], alpha=0.8, linewidths=0)
            ax.set_title(f"{pm.label}\ndecision regions, tested with {how}\n{subtitle}", fontsize=9)
            _square(ax, lim)
        ax_traj, ax_fold = row[2], row[3]
        if steps is None:
            for ax in (ax_traj, ax_fold):
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no fixed steps: no step map", ha="center", va="center", transform=ax.transAxes)
            continue
        folds = fold_mask(model, x)
        extra = [i for i in folds.nonzero()[:, 0].tolist() if i not in set(sample.tolist())][:folded]
        chosen = torch.cat([sample, torch.tensor(extra, dtype=torch.long)])
        with torch.no_grad():
            traj = model.block.trajectory(model.stem(x[chosen])).numpy()  # (steps + 1, m, d)
        window = view * lim
        for j, i in enumerate(chosen.tolist()):
            color = class_colors[int(y[i])]
            style = dict(linestyle="--", linewidth=1.5) if folds[i] else dict(linestyle="-", linewidth=0.9)
            ax_traj.plot(traj[:, j, 0], traj[:, j, 1], color=color, alpha=0.85, marker="." if steps <= 8 else None,
                         markersize=3, **style)  # fmt: skip
            ax_traj.plot(traj[0, j, 0], traj[0, j, 1], "o", color=color, markersize=3.5, markeredgecolor="black",
                         markeredgewidth=0.4)  # fmt: skip
        leave = int((np.abs(traj[..., :2]) > window).any(axis=(0, 2)).sum())
        _square(ax_traj, window)
        ax_traj.set_title(
            f"{pm.label}\ntrajectories ({own}), first two state coords;\n"
            f"{100 * float(folds.float().mean()):.1f}% of test points meet a fold (dashed); "
            f"{leave} of {len(chosen)} leave the view",
            fontsize=9,
        )
        dets = step_jacobian_determinants(model.block, model.stem(grid)).min(dim=0).values.reshape(gx.shape)
        spread = max(float(dets.abs().max()), 1e-6)
        mesh = ax_fold.pcolormesh(gx, gy, dets.numpy(), cmap="RdBu", shading="auto", rasterized=True,
                                  norm=TwoSlopeNorm(vcenter=0.0, vmin=-spread, vmax=spread))  # fmt: skip
        if float(dets.min()) < 0 < float(dets.max()):
            ax_fold.contour(gx, gy, dets.numpy(), levels=[0.0], colors="black", linewidths=0.8)
        for c in classes:
            sel = y == c
            ax_fold.scatter(x[sel, 0], x[sel, 1], s=1, color="grey", alpha=0.5, linewidths=0)
        _square(ax_fold, lim)
        fig.colorbar(mesh, ax=ax_fold, shrink=0.85, label="min over steps of det(∂x_{k+1}/∂x_k)")
        ax_fold.set_title(
            f"{pm.label}\nfold map: red = step map reverses orientation (det < 0)\n"
            f"min det {float(dets.min()):.3g}; {100 * float((dets <= 0).float().mean()):.1f}% of the plane folded",
            fontsize=9,
        )
    for ax in axes.flat:
        if ax.axison:
            ax.set_xlabel("x₁ (input / state coordinate, no unit)")
            ax.set_ylabel("x₂")
    handles = [Line2D([], [], marker="o", linestyle="-", color=class_colors[c], label=f"class {c}") for c in classes]
    handles += [
        Line2D([], [], marker="o", linestyle="none", color="grey", markeredgecolor="black",
               label="trajectory start (the input)"),
        Line2D([], [], linestyle="--", color="grey", label="trajectory meets a fold (det ≤ 0)"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle(
        title
        or "Decision regions, trajectories and folds of the step map: an ODE flow never folds (det > 0), "
        "so crossing trajectories mark a model that is no ODE",
        fontsize=11,
    )
    return fig


def _square(ax: Any, half: float) -> None:
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal", adjustable="box")


# ----------------------------------------------------------------------------------------------
# Report hooks that reload trained models


def _run_config(run_dir: Path) -> Any | None:
    path = run_dir / "config.yaml"
    return OmegaConf.load(path) if path.is_file() and (run_dir / "model.pt").is_file() else None


def _test_data(cfg: Any) -> Dataset:
    d = cfg.data
    return load_dataset(
        d.name, root=d.get("root"), n_train=8, n_test=d.get("n_test"), seed=d.get("seed", 0), dim=d.get("dim", 2),
        noise=d.get("noise"), as_images=d.get("as_images", False),
    )  # fmt: skip


def planar_runs(rows: Sequence[Row], root: Path) -> dict[float, list[tuple[Any, Path]]]:
    """Fixed-step trained runs with saved models on 2-D vector inputs: ``{h: [(seed, run_dir), ...]}``.

    Empty unless the runs are on vector data (no conv field) with inputs of shape ``(2,)``.
    """
    runs: dict[float, dict[str, Any]] = {}
    for r in rows:
        if r["is_train_solver"] and r["status"] == "ok" and r["train_step_size"] is not None:
            runs.setdefault(float(r["train_step_size"]), {})[r["run_dir"]] = r["seed"]
    out: dict[float, list[tuple[Any, Path]]] = {}
    checked: bool | None = None
    for h, dirs in runs.items():
        for run_dir, seed in dirs.items():
            path = (root / run_dir).resolve()
            cfg = _run_config(path)
            if cfg is None:
                continue
            if checked is None:
                if cfg.field.get("kind", "mlp") != "mlp":
                    return {}
                checked = _test_data(cfg).input_shape == (2,)
            if not checked:
                return {}
            out.setdefault(h, []).append((seed, path))
    for h in out:
        out[h].sort(key=lambda sp: report._sort_value(sp[0]))
    return out


def _load(run_dir: Path) -> Classifier:
    from ..runner.train import load_model

    model = load_model(run_dir)
    model.eval()
    return model


@report.register_dir_plot(PLANE_PLOT)
def plane_plot(rows: list[Row], root: Path) -> Figure | None:
    """The largest- and the smallest-step model (first seed) side by side, when inputs are 2-D."""
    runs = planar_runs(rows, root)
    if len(runs) < 2:
        return None
    picks = [(h, runs[h][0]) for h in (max(runs), min(runs))]
    models, data = [], None
    for h, (seed, path) in picks:
        model = _load(path)
        steps = model.block.steps if isinstance(model.block, ResidualStack) else None
        scheme = getattr(model.block, "scheme", "?")
        models.append(PlaneModel(f"trained with {scheme} N={steps} (h={report.fmt_h(h)}), seed {seed}", model))
        if data is None:
            data = _test_data(OmegaConf.load(path / "config.yaml"))
    assert data is not None
    return plane_figure(models, data.x_test, data.y_test)


def fold_table(rows: Sequence[Row], root: Path) -> list[str]:
    """Markdown: per training step size, the fraction of test points meeting a fold (mean over seeds)."""
    runs = planar_runs(rows, root)
    if len(runs) < 2:
        return []
    body = []
    data = None
    for h in sorted(runs):
        fractions, steps = [], None
        for _, path in runs[h]:
            model = _load(path)
            if not isinstance(model.block, ResidualStack):
                continue
            if data is None:
                data = _test_data(OmegaConf.load(path / "config.yaml"))
            steps = model.block.steps
            fractions.append(fold_fraction(model, data.x_test))
        if fractions:
            s = report.stats(fractions)
            assert s is not None
            per_seed = ", ".join(f"{100 * f:.1f}" for f in fractions)
            body.append([report.fmt_h(h), report._fmt(steps), f"{100 * s.mean:.1f}", per_seed])
    if len(body) < 2:
        return []
    return [
        "## Folds of the step map",
        "",
        "Percentage of test points whose trajectory (under the training solver) meets a step with "
        "det(∂x_{k+1}/∂x_k) ≤ 0. An ODE flow map always has det > 0; a step map that reverses orientation "
        "somewhere folds the state space, so it maps two distinct states to one point: trajectories cross.",
        "",
        *report._md_table(["h", "N", "folded test points (%), mean", "per seed (%)"], body),
    ]


@report.register_section("folds")
def fold_section(rows: list[Row], root: Path) -> list[str] | None:
    """Report section: :func:`fold_table` (None without 2-D inputs and saved models at two step sizes)."""
    return fold_table(rows, root) or None
