"""Report section and plot for the ``augmentation`` experiment (Dupont et al. 2019): can NODE, ANODE and small- /
large-step ResNets separate a 2-D disk from the annulus around it?

Registered when :mod:`odenet.reports` is imported:

* "Topology on concentric spheres": 2-D ``concentric_spheres`` models reloaded and evaluated on dense uniform
  samples of the inner disk and of the annulus (:func:`region_errors`). A 2-D ODE flow is a homeomorphism, so
  its inner-class region (the preimage of a half-plane under the flow map) is connected and unbounded: if it
  holds the disk it must cross the annulus. The fraction of the annulus classified "inner" measures that leak.
* ``flows.png``: in sweeps holding a model trained through an adaptive solver or with a penalty (this one and
  ``regularization``), models on 2-D inputs with two classes (first seed of each, at most six): trajectories of
  test points (first two state coordinates, or three in 3-D when the state is augmented), decision regions over
  the input plane, and the final state's separation (logit margin against input radius).

The NFE over training of these sweeps is :mod:`odenet.reports.regularization`'s. Each returns ``None`` when the
sweep holds none of its data.
"""

from __future__ import annotations

import math

import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Line3DCollection

from ..blocks import ODEBlock
from .chance import label_mark, mark_cell, value_at_chance, withheld_section, withhold
from .collect import ReportContext
from .markdown import md_table
from .plane import plane_resolution
from .registry import register_plot, register_section
from .runs import Run, by_data_and_label, configured_runs, run_dataset
from .stats import mean_std

CLASS_COLORS = ("tab:blue", "tab:red")
TRAJECTORY_POINTS = 160  # test points whose trajectories flows.png draws
DENSE_POINTS = 20_000  # uniform samples per region for region_errors
SMOKE_POINTS = 2_000  # ... in a report of smoke runs
MAX_FLOW_MODELS = 6
SMOKE_FLOW_MODELS = 2  # in a report of smoke runs: the first two models show the plot works
TEST_POINTS = 1000  # test inputs drawn in flows.png


# ---------------------------------------------------------------------------------------------- topology


def uniform_ball_shell(n: int, r0: float, r1: float, seed: int = 0) -> torch.Tensor:
    """``n`` points uniform in area in the 2-D shell ``r0 < |x| < r1`` (a disk for ``r0 = 0``)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.sqrt(torch.rand(n, generator=g) * (r1**2 - r0**2) + r0**2)
    theta = torch.rand(n, generator=g) * 2 * math.pi
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


@torch.no_grad()
def region_errors(model: torch.nn.Module, n: int = DENSE_POINTS, seed: int = 0) -> dict[str, float]:
    """On ``concentric_spheres`` in 2-D: the fraction of a dense uniform sample of the annulus ``1 < r < 1.5``
    predicted as the inner class 0 (``annulus_as_inner``) and of the disk ``r < 0.5`` predicted as class 1
    (``disk_as_outer``)."""
    model.eval()
    out = {}
    for key, (r0, r1), wrong in (("disk_as_outer", (0.0, 0.5), 1), ("annulus_as_inner", (1.0, 1.5), 0)):
        x = uniform_ball_shell(n, r0, r1, seed)
        pred = torch.cat([model(chunk).argmax(-1) for chunk in x.split(5000)])
        out[key] = float((pred == wrong).float().mean())
    return out


def _topology_runs(ctx: ReportContext) -> list[Run] | None:
    runs = [r for r in configured_runs(ctx) if r.cfg.data.name == "concentric_spheres" and r.cfg.data.dim == 2]
    return runs or None


@register_section("topology")
def topology_section(ctx: ReportContext) -> list[str] | None:
    """Dense-sample errors of 2-D concentric-spheres models: the leak of the inner class through the annulus."""
    runs = _topology_runs(ctx)
    if runs is None:
        return None
    body, chance = [], []
    points = SMOKE_POINTS if any(r.smoke for r in runs) else DENSE_POINTS
    for label, rs in by_data_and_label(runs)[runs[0].data].items():
        errors = [region_errors(r.model(), points) for r in rs]
        acc = [r.train_eval().get("accuracy") for r in rs]
        withheld = withhold(ctx, [r.run_dir for r in rs])
        chance += [r.run_dir for r in rs]
        leaks = f"{sum(e['annulus_as_inner'] > 0 for e in errors)}/{len(errors)}"
        body.append([label + label_mark(ctx, [r.run_dir for r in rs]), str(len(rs)),
                     mark_cell(mean_std(acc), value_at_chance(acc, [r.baseline for r in rs])),
                     mean_std([e["disk_as_outer"] for e in errors], "{:.4f}"),
                     mean_std([e["annulus_as_inner"] for e in errors], "{:.4f}"),
                     "withheld" if withheld else leaks])
    lines = [
        "## Topology on concentric spheres (2-D)",
        "",
        f"Each trained model on {points:,} points uniform in the inner disk (r < 0.5, class 0) and "
        f"{points:,} in the annulus (1 < r < 1.5, class 1), under its training solver. A 2-D ODE flow is a "
        "homeomorphism and the head is linear, so the region a NODE classifies as inner is connected and "
        "unbounded: holding the disk, it must cut through the annulus (annulus → inner > 0). Augmented flows and "
        "large-step ResNets are not bound by this.",
        "",
        *md_table(["model", "seeds", "test acc.", "disk → outer", "annulus → inner",
                           "runs with annulus → inner > 0"], body),
    ]
    return withheld_section(ctx, lines, "Which models leak through the annulus", chance)


# ---------------------------------------------------------------------------------------------- flows


def _flow_runs(ctx: ReportContext) -> list[tuple[Run, torch.Tensor, torch.Tensor]] | None:
    runs = configured_runs(ctx)
    if not any(r.adaptive or r.penalised for r in runs):
        return None  # like the dynamics section: for sweeps with an adaptive ODE block or a penalty
    picked: dict[str, Run] = {}
    for run in runs:
        if run.cfg.field.kind != "mlp" or run.cfg.block.kind == "plain":
            continue
        picked.setdefault(f"{run.data}: {run.label}", run)  # the first seed of each model
    out = []
    limit = SMOKE_FLOW_MODELS if any(r.smoke for r in runs) else MAX_FLOW_MODELS
    for run in picked.values():
        data = run_dataset(ctx, run)
        x, y = data.x_test[:TEST_POINTS], data.y_test[:TEST_POINTS]
        if x.ndim != 2 or x.shape[1] != 2 or int(y.max()) > 1:
            continue
        out.append((run, x, y))
        if len(out) == limit:
            break
    return out or None


def _trajectory(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    z = model.stem(x)
    block = model.block
    return block.trajectory(z, 32) if isinstance(block, ODEBlock) else block.trajectory(z)


@register_plot("flows.png")
@torch.no_grad()
def flows_plot(ctx: ReportContext) -> Figure | None:
    """Learned flows of 2-D, two-class models: trajectories, decision regions and the final separation."""
    items = _flow_runs(ctx)
    if items is None:
        return None
    n = len(items)
    fig = Figure(figsize=(4.3 * n + 0.8, 12.6), layout="constrained")
    grid = fig.add_gridspec(3, n)
    g = torch.Generator().manual_seed(0)
    for col, (run, x, y) in enumerate(items):
        model = run.model()
        idx = torch.randperm(len(x), generator=g)[:TRAJECTORY_POINTS]
        xs, ys = x[idx], y[idx]
        traj = _trajectory(model, xs).numpy()  # (times, B, d)
        colors = [CLASS_COLORS[int(c)] for c in ys]
        title = f"{run.label}\n{run.data}, seed {run.seed}"
        if traj.shape[-1] >= 3:
            ax = fig.add_subplot(grid[0, col], projection="3d")
            lines3 = Line3DCollection(traj[:, :, :3].transpose(1, 0, 2), colors=colors, linewidths=0.5, alpha=0.5)
            ax.add_collection3d(lines3)  # one artist for all trajectories: the same picture, drawn far faster
            ax.auto_scale_xyz(traj[..., 0], traj[..., 1], traj[..., 2])
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], traj[-1, :, 2], c=colors, s=5)
            ax.set_zlabel("state 3 (augmented)" if run.cfg.model.augment_dim else "state 3", fontsize=8, labelpad=10)
            ax.tick_params(labelsize=7)
        else:
            ax = fig.add_subplot(grid[0, col])
            ax.add_collection(LineCollection(traj[:, :, :2].transpose(1, 0, 2), colors=colors, linewidths=0.5,
                                             alpha=0.5))  # one artist for all trajectories: the same picture
            ax.autoscale_view()
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], c=colors, s=5, zorder=3)
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("state 1", fontsize=8)
        ax.set_ylabel("state 2", fontsize=8)
        ax.set_title(title, fontsize=9)

        ax = fig.add_subplot(grid[1, col])
        extent = 1.3 * float(x.abs().max())
        axis = torch.linspace(-extent, extent, plane_resolution(ctx, [run], len(x)) + 1)
        gx, gy = torch.meshgrid(axis, axis, indexing="xy")
        plane = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
        prob = torch.cat([torch.softmax(model(c), -1)[:, 1] for c in plane.split(5000)]).reshape(gx.shape)
        ax.contourf(axis.numpy(), axis.numpy(), prob.numpy(), levels=[0, 0.5, 1], colors=["#c6dbef", "#fcbba1"])
        ax.contour(axis.numpy(), axis.numpy(), prob.numpy(), levels=[0.5], colors="k", linewidths=0.8)
        ax.scatter(x[:, 0], x[:, 1], c=[CLASS_COLORS[int(c)] for c in y], s=2, alpha=0.6)
        ax.set_aspect("equal")
        ax.set_title("decision regions (input plane) and test points", fontsize=9)

        ax = fig.add_subplot(grid[2, col])
        logits = model(x)
        margin = (logits[:, 1] - logits[:, 0]).numpy()
        radius = x.norm(dim=1).numpy()
        ax.scatter(margin, radius, c=[CLASS_COLORS[int(c)] for c in y], s=3, alpha=0.6)
        ax.axvline(0, color="k", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("head margin logit₁ − logit₀ of the final state (symlog)", fontsize=8)
        ax.set_ylabel("input radius |x|", fontsize=8)
        ax.set_title("separation of the final state (0: decision)", fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Learned flows ({TRAJECTORY_POINTS} test trajectories; blue: class 0, red: class 1)", fontsize=11)
    return fig
