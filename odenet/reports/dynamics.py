"""Report sections and plots on the learned dynamics: NFE and accuracy over training, learned flows, the topology
of a 2-D flow, and the penalties of Finlay et al. (2020). For the ``augmentation`` and ``regularization``
experiments; registered with :mod:`odenet.report` (listed in ``report.EXTENSIONS``).

Sections and plots:

* "Dynamics: accuracy and NFE" (``nfe_over_training.png``): for sweeps holding a model trained through an
  adaptive solver or with a penalty. Per data set and model (mean ± std over seeds): test accuracy, NFE per
  training iteration forward and backward (adjoint) — over the whole training and over its last tenth — and the
  trained model's test NFE, from each run's ``history.csv`` and ``metrics.json``.
* "Kinetic energy and Jacobian after training": for sweeps holding a penalised run; every ODE model is reloaded
  and ``int ||F||^2 dt`` and ``int ||dF/dx||_F^2 dt`` (Hutchinson) are measured on the test inputs, penalised
  or not (:func:`measure_penalties`).
* "Topology on concentric spheres": 2-D ``concentric_spheres`` models reloaded and evaluated on dense uniform
  samples of the inner disk and of the annulus (:func:`region_errors`). A 2-D ODE flow is a homeomorphism, so
  its inner-class region (the preimage of a half-plane under the flow map) is connected and unbounded: if it
  holds the disk it must cross the annulus. The fraction of the annulus classified "inner" measures that leak.
* ``flows.png``: in the same sweeps, models on 2-D inputs with two classes (first seed of each, at most six):
  trajectories of test points (first two state coordinates, or three in 3-D when the state is augmented),
  decision regions over the input plane, and the final state's separation (logit margin against input radius).

Each returns ``None`` when the sweep holds none of its data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ..blocks import ODEBlock, ResidualStack
from ..runner.io import read_csv
from ..solvers import is_adaptive
from . import core as report
from .core import mean_std

Row = dict[str, Any]
CLASS_COLORS = ("tab:blue", "tab:red")
TRAJECTORY_POINTS = 160  # test points whose trajectories flows.png draws
DENSE_POINTS = 20_000  # uniform samples per region for region_errors
MAX_FLOW_MODELS = 6
LOSS_THRESHOLD = 0.01  # "iterations to loss below": the training task loss (window mean of history.csv)


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One finished run: its dir, ``metrics.json``, resolved ``config.yaml`` and ``history.csv``."""

    dir: Path
    metrics: dict[str, Any]
    cfg: DictConfig
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return model_label(self.cfg)

    @property
    def data(self) -> str:
        d = self.cfg.data
        return f"{d.name} (dim {d.dim})" if d.name == "concentric_spheres" else str(d.name)

    @property
    def seed(self) -> int:
        return int(self.metrics.get("seed") or 0)

    @property
    def adaptive(self) -> bool:
        return (self.metrics.get("train") or {}).get("rtol") is not None

    @property
    def penalised(self) -> bool:
        r = self.cfg.regularization
        return bool(r.kinetic > 0 or r.jacobian > 0)

    def train_eval(self) -> dict[str, Any]:
        evs = [e for e in self.metrics.get("evaluations") or [] if e.get("is_train_solver")]
        return evs[0] if evs else {}


def model_label(cfg: DictConfig) -> str:
    """``NODE (dopri5)``, ``ANODE +1 (dopri5, adjoint)``, ``ResNet N=32 (h=1/32)``, plus the penalty weights."""
    kind, s, aug = cfg.block.kind, cfg.solver, int(cfg.model.augment_dim)
    if kind == "ode":
        name = f"ANODE +{aug}" if aug else "NODE"
        how = s.name if is_adaptive(s.name) else f"{s.name} N={s.steps}"
        label = f"{name} ({how}{', adjoint' if s.adjoint else ''})"
    else:
        name = {"residual": "ResNet", "plain": "plain net", "learned_steps": "ResNet, learned h"}.get(kind, kind)
        h = report.fmt_h(cfg.block.T / s.steps) if s.steps else "?"
        scheme = "" if s.name == "euler" else f"{s.name}, "
        label = f"{name} N={s.steps} ({scheme}h={h})" + (f" +{aug}" if aug else "")
    r = cfg.regularization
    weights = [f"{name} {w:g}" for name, w in (("kinetic", r.kinetic), ("jacobian", r.jacobian)) if w > 0]
    return label + (f", {', '.join(weights)}" if weights else "")


def load_runs(rows: list[Row], root: Path) -> list[Run]:
    """The ok runs among ``rows`` (one per run dir), sorted by data set, model and seed."""
    runs = []
    for rel in dict.fromkeys(r["run_dir"] for r in rows):
        d = root / rel
        try:
            metrics = json.loads((d / report.METRICS).read_text())
            cfg = OmegaConf.load(d / "config.yaml")
        except (OSError, ValueError):
            continue
        if metrics.get("status") != "ok" or not isinstance(cfg, DictConfig):
            continue
        try:
            from ..runner.config import Config

            cfg = OmegaConf.merge(OmegaConf.structured(Config), cfg)  # defaults for keys older runs lack
        except Exception:
            continue
        runs.append(Run(d, metrics, cfg, read_csv(d / "history.csv")))
    runs.sort(key=lambda r: (r.data, _model_order(r.cfg), r.label, r.seed))
    return runs


def _model_order(cfg: DictConfig) -> tuple[int, float]:
    kind = cfg.block.kind
    if kind == "ode":
        return (0, cfg.model.augment_dim + 10 * (cfg.regularization.kinetic + cfg.regularization.jacobian))
    return (1, -(cfg.solver.steps or 0))


def _by_data_and_label(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
    out: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        out.setdefault(run.data, {}).setdefault(run.label, []).append(run)
    return out


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


def _dynamics_runs(rows: list[Row], root: Path) -> list[Run] | None:
    runs = [r for r in load_runs(rows, root) if r.history]
    if not any(r.adaptive or r.penalised for r in runs):
        return None
    return runs


def _tight_eval(run: Run) -> dict[str, Any] | None:
    """The evaluation with an adaptive solver that is not the training one (e.g. dopri5 at rtol 1e-6)."""
    for ev in run.metrics.get("evaluations") or []:
        if not ev.get("is_train_solver") and ev.get("rtol") is not None and ev.get("status") == "ok":
            return ev
    return None


@report.register_section("dynamics")
def dynamics_section(rows: list[Row], root: Path) -> list[str] | None:
    """Accuracy and NFE (training forward / backward, test) per data set and model, mean ± std over seeds."""
    runs = _dynamics_runs(rows, root)
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
    for data, by_label in _by_data_and_label(runs).items():
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
            cells = [label, str(len(rs)), mean_std([r.train_eval().get("accuracy") for r in rs]),
                     mean_std([(r.metrics.get("train") or {}).get("train_accuracy") for r in rs]),
                     mean_std([(r.metrics.get("train") or {}).get("train_loss") for r in rs], "{:.3g}"),
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
                cells += [mean_std([e.get("accuracy") for e in evs]), mean_std([e.get("nfe") for e in evs], "{:.0f}")]
            for p in penalties:
                means = [history_means(r.history, p) for r in rs]
                cells.append(mean_std([m[1] if m else None for m in means], "{:.3g}"))
            cells.append(mean_std([_column(r.history, "seconds")[-1] for r in rs], "{:.0f}"))
            body.append(cells)
        lines += [f"### {data}", "", *report._md_table(header, body)]
    return lines


@report.register_dir_plot("nfe_over_training.png")
def nfe_over_training_plot(rows: list[Row], root: Path) -> Figure | None:
    """NFE forward (and backward, adjoint) and training accuracy against iteration, one line per model."""
    runs = _dynamics_runs(rows, root)
    if runs is None:
        return None
    groups = _by_data_and_label(runs)
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
    handles = report._legend_union(list(axes.flat))
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


def _test_inputs(cfg: DictConfig, limit: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import load_dataset

    d = cfg.data
    data = load_dataset(d.name, root=d.root, n_train=d.n_train, n_test=d.n_test, seed=d.seed, dim=d.dim,
                        noise=d.noise, as_images=d.as_images, synthetic=d.synthetic)
    return data.x_test[:limit], data.y_test[:limit]


def _load(run: Run) -> torch.nn.Module:
    from ..runner.train import load_model

    return load_model(run.dir).eval()


@report.register_section("penalties")
def penalties_section(rows: list[Row], root: Path) -> list[str] | None:
    """Kinetic energy and Jacobian norm of every trained model, penalised or not, measured after training."""
    runs = [r for r in load_runs(rows, root) if (r.metrics.get("train") or {}).get("block") != "plain"]
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
    for data, by_label in _by_data_and_label(runs).items():
        body = []
        for label, rs in by_label.items():
            measured = []
            for r in rs:
                x, _ = _test_inputs(r.cfg)
                measured.append(measure_penalties(_load(r), x))
            body.append([label, str(len(rs)), mean_std([m.get("kinetic") for m in measured], "{:.4g}"),
                         mean_std([m.get("jacobian") for m in measured], "{:.4g}")])
        lines += [f"### {data}", "", *report._md_table(["model", "seeds", "kinetic", "jacobian"], body)]
    return lines


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


def _topology_runs(rows: list[Row], root: Path) -> list[Run] | None:
    runs = [r for r in load_runs(rows, root) if r.cfg.data.name == "concentric_spheres" and r.cfg.data.dim == 2]
    return runs or None


@report.register_section("topology")
def topology_section(rows: list[Row], root: Path) -> list[str] | None:
    """Dense-sample errors of 2-D concentric-spheres models: the leak of the inner class through the annulus."""
    runs = _topology_runs(rows, root)
    if runs is None:
        return None
    body = []
    for label, rs in _by_data_and_label(runs)[runs[0].data].items():
        errors = [region_errors(_load(r)) for r in rs]
        body.append([label, str(len(rs)), mean_std([r.train_eval().get("accuracy") for r in rs]),
                     mean_std([e["disk_as_outer"] for e in errors], "{:.4f}"),
                     mean_std([e["annulus_as_inner"] for e in errors], "{:.4f}"),
                     f"{sum(e['annulus_as_inner'] > 0 for e in errors)}/{len(errors)}"])
    return [
        "## Topology on concentric spheres (2-D)",
        "",
        f"Each trained model on {DENSE_POINTS:,} points uniform in the inner disk (r < 0.5, class 0) and "
        f"{DENSE_POINTS:,} in the annulus (1 < r < 1.5, class 1), under its training solver. A 2-D ODE flow is a "
        "homeomorphism and the head is linear, so the region a NODE classifies as inner is connected and "
        "unbounded: holding the disk, it must cut through the annulus (annulus → inner > 0). Augmented flows and "
        "large-step ResNets are not bound by this.",
        "",
        *report._md_table(["model", "seeds", "test acc.", "disk → outer", "annulus → inner",
                           "runs with annulus → inner > 0"], body),
    ]


# ---------------------------------------------------------------------------------------------- flows


def _flow_runs(rows: list[Row], root: Path) -> list[tuple[Run, torch.Tensor, torch.Tensor]] | None:
    runs = load_runs(rows, root)
    if not any(r.adaptive or r.penalised for r in runs):
        return None  # like the dynamics section: for sweeps with an adaptive ODE block or a penalty
    picked: dict[str, Run] = {}
    for run in runs:
        if run.cfg.field.kind != "mlp" or run.cfg.block.kind == "plain":
            continue
        picked.setdefault(f"{run.data}: {run.label}", run)  # the first seed of each model
    out = []
    for run in list(picked.values())[:MAX_FLOW_MODELS]:
        x, y = _test_inputs(run.cfg)
        if x.ndim != 2 or x.shape[1] != 2 or int(y.max()) > 1:
            continue
        out.append((run, x, y))
    return out or None


def _trajectory(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    z = model.stem(x)
    block = model.block
    return block.trajectory(z, 32) if isinstance(block, ODEBlock) else block.trajectory(z)


@report.register_dir_plot("flows.png")
@torch.no_grad()
def flows_plot(rows: list[Row], root: Path) -> Figure | None:
    """Learned flows of 2-D, two-class models: trajectories, decision regions and the final separation."""
    items = _flow_runs(rows, root)
    if items is None:
        return None
    n = len(items)
    fig = Figure(figsize=(4.3 * n + 0.8, 12.6), layout="constrained")
    grid = fig.add_gridspec(3, n)
    g = torch.Generator().manual_seed(0)
    for col, (run, x, y) in enumerate(items):
        model = _load(run)
        idx = torch.randperm(len(x), generator=g)[:TRAJECTORY_POINTS]
        xs, ys = x[idx], y[idx]
        traj = _trajectory(model, xs).numpy()  # (times, B, d)
        colors = [CLASS_COLORS[int(c)] for c in ys]
        title = f"{run.label}\n{run.data}, seed {run.seed}"
        if traj.shape[-1] >= 3:
            ax = fig.add_subplot(grid[0, col], projection="3d")
            for b in range(traj.shape[1]):
                ax.plot(traj[:, b, 0], traj[:, b, 1], traj[:, b, 2], color=colors[b], linewidth=0.5, alpha=0.5)
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], traj[-1, :, 2], c=colors, s=5)
            ax.set_zlabel("state 3 (augmented)" if run.cfg.model.augment_dim else "state 3", fontsize=8, labelpad=10)
            ax.tick_params(labelsize=7)
        else:
            ax = fig.add_subplot(grid[0, col])
            for b in range(traj.shape[1]):
                ax.plot(traj[:, b, 0], traj[:, b, 1], color=colors[b], linewidth=0.5, alpha=0.5)
            ax.scatter(traj[-1, :, 0], traj[-1, :, 1], c=colors, s=5, zorder=3)
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("state 1", fontsize=8)
        ax.set_ylabel("state 2", fontsize=8)
        ax.set_title(title, fontsize=9)

        ax = fig.add_subplot(grid[1, col])
        extent = 1.3 * float(x.abs().max())
        axis = torch.linspace(-extent, extent, 121)
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
