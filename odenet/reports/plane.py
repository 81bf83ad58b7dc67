"""Pictures of trained 2-D models in the input plane, and the folds of their step map (Ott et al. ICLR 2021).

* :func:`~odenet.analysis.folds.step_jacobian_determinants` / :func:`~odenet.analysis.folds.fold_fraction` —
  ``det(dx_{k+1} / dx_k)`` along the trajectory of a :class:`~odenet.blocks.ResidualStack`. An ODE flow map
  has ``det = exp(int div F dt) > 0``; a step map with ``det <= 0`` somewhere (and ``> 0`` far away) folds the
  state space, so it is not injective: two distinct states land on the same point — trajectories cross, which
  no ODE flow can do.
* :func:`plane_figure` — decision regions in the input plane (under the training solver and under a fine solve
  of the same field), trajectories projected on the plane and the fold map, for models on 2-D inputs (a
  large-step model next to a small-step one).

Registered when :mod:`odenet.reports` is imported (after :mod:`~odenet.reports.step_size_ablation`, the
experiment they belong to; ``augmentation`` and ``depth_smoothness`` sweeps fit them too): the "Folds of the
step map" section and ``plane_large_vs_small_step.png``, for fixed-step models on 2-D inputs at two or more
step sizes with saved models.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from ..analysis.folds import fold_mask, predict, step_jacobian_determinants
from ..blocks import ResidualStack, SolverError
from ..integrator import fmt_h
from ..models import Classifier
from ..runner.rundir import RunDirError
from .chance import label_mark
from .collect import ReportContext
from .markdown import fmt, md_table
from .registry import register_plot, register_section
from .runs import Run, run_dataset
from .stats import sort_value, stats

PLANE_PLOT = "plane_large_vs_small_step.png"
#: Grid points per axis of the decision regions and the fold map; :data:`SMALL_RESOLUTION` for smoke runs and for
#: test sets under :data:`SMALL_DATA` points (a picture of 64 points needs no 120 x 120 grid, and the fold map's
#: Jacobians on it dominate a smoke sweep's report).
PLANE_RESOLUTION = 120
SMALL_RESOLUTION = 40
SMALL_DATA = 500


# ----------------------------------------------------------------------------------------------
# Pictures in the plane


@dataclass
class PlaneModel:
    """A trained model on 2-D inputs with the label it gets in a figure (e.g. ``euler h=1/2, seed 0``)."""

    label: str
    model: Classifier
    folds: Tensor | None = None  # fold_mask(model, x) when already computed


def _grid(lim: float, resolution: int) -> tuple[np.ndarray, np.ndarray, Tensor]:
    axis = np.linspace(-lim, lim, resolution)
    gx, gy = np.meshgrid(axis, axis)
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype=torch.float32)
    return gx, gy, pts


def _predict_both(model: Classifier, grid: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions on the grid and on the test points: one solve of both for a fixed-step stack (each point's
    prediction is its own), two apart otherwise (an adaptive solver's steps depend on the whole batch)."""
    if isinstance(model.block, ResidualStack):
        both = predict(model, torch.cat([grid, x]))
        return both[: len(grid)], both[len(grid) :]
    return predict(model, grid), predict(model, x)


def _steps(model: Classifier) -> int:
    """The steps of a fixed-step model's stack (0 for any other block)."""
    return model.block.steps if isinstance(model.block, ResidualStack) else 0


def _predictions(models: Sequence[Classifier], grid: Tensor, x: Tensor) -> list[Future]:
    """:func:`_predict_both` of each model, two at a time (torch's kernels release the GIL, so the report's two
    cores share the fine solves); ``result()`` gives its predictions or raises its ``SolverError``."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [pool.submit(_predict_both, model, grid, x) for model in models]


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
    fines = [_fine_model(pm.model, max(fine_steps, 4 * _steps(pm.model))) for pm in models]
    predicted = iter(_predictions([m for pm, (fine, _) in zip(models, fines) for m in (pm.model, fine)], grid, x))
    for row, pm, (_, fine_label) in zip(axes, models, fines):
        model = pm.model
        steps = _steps(model) or None
        own = f"{model.block.scheme}, {steps} steps" if steps else "training solver"
        for ax, how in ((row[0], own), (row[1], fine_label)):
            try:
                pred, pred_x = next(predicted).result()
                pred = pred.reshape(gx.shape).numpy()
                acc = float((pred_x == y).float().mean())
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
        folds = pm.folds if pm.folds is not None else fold_mask(model, x)
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


def planar_runs(ctx: ReportContext) -> dict[float, list[tuple[Any, Run]]]:
    """Fixed-step trained runs with saved models on 2-D vector inputs: ``{h: [(seed, run), ...]}``.

    Empty unless the runs are on vector data (no image conv field) with inputs of shape ``(2,)``.
    """
    runs: dict[float, dict[str, Any]] = {}
    for r in ctx.rows:
        if r["is_train_solver"] and r["status"] == "ok" and r["train_step_size"] is not None:
            runs.setdefault(float(r["train_step_size"]), {})[r["run_dir"]] = r["seed"]
    out: dict[float, list[tuple[Any, Run]]] = {}
    checked: bool | None = None
    for h, dirs in runs.items():
        for run_dir, seed in dirs.items():
            run = Run(run_dir, ctx.run(run_dir))
            if not run.folder.file(run.folder.MODEL).is_file():
                continue
            try:
                cfg = run.cfg
            except RunDirError:
                continue
            if checked is None:
                if cfg.field.get("kind", "mlp") == "conv":  # image states; mlp / conv1d / linear act on vectors
                    return {}
                checked = run_dataset(ctx, run).input_shape == (2,)
            if not checked:
                return {}
            out.setdefault(h, []).append((seed, run))
    for h in out:
        out[h].sort(key=lambda sp: sort_value(sp[0]))
    return out


def plane_resolution(ctx: ReportContext, runs: Sequence[Run], n_points: int) -> int:
    """:data:`SMALL_RESOLUTION` for smoke runs or fewer than :data:`SMALL_DATA` test points, else
    :data:`PLANE_RESOLUTION`."""
    small = n_points < SMALL_DATA or any(ctx.smoke(run.run_dir) for run in runs)
    return SMALL_RESOLUTION if small else PLANE_RESOLUTION


def run_folds(ctx: ReportContext, run: Run) -> Tensor:
    """:func:`~odenet.analysis.folds.fold_mask` of a run's model on its test inputs, computed once per report."""
    return ctx.cached(("folds", run.run_dir), lambda: fold_mask(run.model(), run_dataset(ctx, run).x_test))


@register_plot(PLANE_PLOT)
def plane_plot(ctx: ReportContext) -> Figure | None:
    """The largest- and the smallest-step model (first seed) side by side, when inputs are 2-D."""
    runs = planar_runs(ctx)
    if len(runs) < 2:
        return None
    picks = [(h, runs[h][0]) for h in (max(runs), min(runs))]
    models, data = [], None
    for h, (seed, run) in picks:
        model = run.model()
        steps = model.block.steps if isinstance(model.block, ResidualStack) else None
        scheme = getattr(model.block, "scheme", "?")
        label = f"trained with {scheme} N={steps} (h={fmt_h(h)}), seed {seed}" + label_mark(ctx, [run.run_dir])
        folds = run_folds(ctx, run) if steps is not None else None
        models.append(PlaneModel(label, model, folds))
        if data is None:
            data = run_dataset(ctx, run)
    assert data is not None
    resolution = plane_resolution(ctx, [run for _, (_, run) in picks], len(data.x_test))
    return plane_figure(models, data.x_test, data.y_test, resolution=resolution)


def fold_table(ctx: ReportContext) -> list[str]:
    """Markdown: per training step size, the fraction of test points meeting a fold (mean over seeds)."""
    runs = planar_runs(ctx)
    if len(runs) < 2:
        return []
    body = []
    for h in sorted(runs):
        fractions, steps, dirs = [], None, []
        for _, run in runs[h]:
            model = run.model()
            if not isinstance(model.block, ResidualStack):
                continue
            steps = model.block.steps
            fractions.append(float(run_folds(ctx, run).float().mean()))
            dirs.append(run.run_dir)
        if fractions:
            s = stats(fractions)
            assert s is not None
            per_seed = ", ".join(f"{100 * f:.1f}" for f in fractions)
            body.append([fmt_h(h) + label_mark(ctx, dirs), fmt(steps), f"{100 * s.mean:.1f}", per_seed])
    if len(body) < 2:
        return []
    return [
        "## Folds of the step map",
        "",
        "Percentage of test points whose trajectory (under the training solver) meets a step with "
        "det(∂x_{k+1}/∂x_k) ≤ 0. An ODE flow map always has det > 0; a step map that reverses orientation "
        "somewhere folds the state space, so it maps two distinct states to one point: trajectories cross.",
        "",
        *md_table(["h", "N", "folded test points (%), mean", "per seed (%)"], body),
    ]


@register_section("folds")
def fold_section(ctx: ReportContext) -> list[str] | None:
    """Report section: :func:`fold_table` (None without 2-D inputs and saved models at two step sizes)."""
    return fold_table(ctx) or None
