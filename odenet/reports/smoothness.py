"""Report sections and plots for the smoothness experiments (degradation, gradient_flow, loss_landscape,
depth_smoothness), registered with :mod:`odenet.report` (listed in ``report.EXTENSIONS``).

They read each run's ``metrics.json`` (its ``train`` description, ``task`` and the ``analysis`` written by
``odenet.measure``) and return ``None`` when the sweep holds none of their data.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..analysis.depth import loglog_slope
from . import core as report
from .core import mean_std

Row = dict[str, Any]

BLOCK_COLORS = {"plain": "tab:red", "residual": "tab:blue", "ode": "tab:green", "learned_steps": "tab:purple"}


def _runs(rows: list[Row], root: Path) -> list[dict[str, Any]]:
    """The ok runs' metrics.json, each with ``_dir`` (relative) and ``_label``; cached per (root, dirs)."""
    out = []
    for run_dir in dict.fromkeys(r["run_dir"] for r in rows):
        path = root / run_dir / report.METRICS
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") != "ok":
            continue
        data["_dir"] = run_dir
        data["_label"] = _label(data)
        out.append(data)
    return out


def _label(m: dict[str, Any]) -> str:
    t = m.get("train") or {}
    block = t.get("block") or "?"
    if t.get("steps"):
        return f"{block} N={t['steps']}"
    if t.get("rtol") is not None:
        return f"{block} {t.get('solver')} rtol={t['rtol']:g}"
    return f"{block} {t.get('solver')}"


def _key(m: dict[str, Any]) -> tuple[Any, ...]:
    t = m.get("train") or {}
    order = {"plain": 0, "residual": 1, "learned_steps": 2, "ode": 3}
    return (order.get(t.get("block"), 9), t.get("steps") or 10**9, t.get("solver") or "")


def _group(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in sorted(runs, key=_key):
        groups.setdefault(m["_label"], []).append(m)
    return groups


def _analysis(m: dict[str, Any], name: str) -> dict[str, Any] | None:
    a = (m.get("analysis") or {}).get(name)
    return a if isinstance(a, dict) and "error" not in a else None


def _test(m: dict[str, Any]) -> dict[str, Any]:
    evs = [e for e in m.get("evaluations") or [] if e.get("is_train_solver")]
    return evs[0] if evs else {}


# ---------------------------------------------------------------------------------------------- degradation


def _stack_runs(rows: list[Row], root: Path) -> list[dict[str, Any]]:
    return [m for m in _runs(rows, root) if (m.get("train") or {}).get("block") in ("plain", "residual")
            and (m.get("train") or {}).get("steps")]


def _degradation_data(rows: list[Row], root: Path) -> dict[str, dict[int, list[dict[str, Any]]]] | None:
    runs = [m for m in _stack_runs(rows, root) if m.get("task", "classification") == "classification"]
    by: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for m in runs:
        by.setdefault(m["train"]["block"], {}).setdefault(int(m["train"]["steps"]), []).append(m)
    if len(by) < 2 or not all(len(d) > 1 for d in by.values()):
        return None
    return by


@report.register_section("degradation")
def degradation_section(rows: list[Row], root: Path) -> list[str] | None:
    """Final training loss (whole training set) and test accuracy against depth, plain vs residual."""
    by = _degradation_data(rows, root)
    if by is None:
        return None
    depths = sorted({n for d in by.values() for n in d})
    blocks = [b for b in ("plain", "residual") if b in by]
    header = ["depth N"] + [f"{b}: train loss" for b in blocks] + [f"{b}: test acc." for b in blocks]
    body = []
    for n in depths:
        cells = [str(n)]
        cells += [mean_std([m["train"].get("train_loss") for m in by[b].get(n, [])]) for b in blocks]
        cells += [mean_std([_test(m).get("accuracy") for m in by[b].get(n, [])]) for b in blocks]
        body.append(cells)
    seeds = max(len(v) for d in by.values() for v in d.values())
    return [
        "## Degradation (plain vs residual)",
        "",
        f"Training loss: mean cross-entropy of the final model on the whole training set; test accuracy under "
        f"the training solver. Mean ± sample std over up to {seeds} seeds.",
        "",
        *report._md_table(header, body),
    ]


@report.register_dir_plot("degradation.png")
def degradation_plot(rows: list[Row], root: Path) -> Figure | None:
    by = _degradation_data(rows, root)
    if by is None:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for b, d in sorted(by.items()):
        ns = sorted(d)
        getters = ((ax_loss, lambda m: m["train"].get("train_loss")), (ax_acc, lambda m: _test(m).get("accuracy")))
        for ax, get in getters:
            vals = [[get(m) for m in d[n] if get(m) is not None] for n in ns]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            ax.plot(ns, means, marker="o", color=BLOCK_COLORS.get(b), label=f"{b} (mean)")
            for n, v in zip(ns, vals):
                ax.scatter([n] * len(v), v, color=BLOCK_COLORS.get(b), s=12, alpha=0.4)
    for ax in (ax_loss, ax_acc):
        depths = sorted({n for d in by.values() for n in d})
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(n) for n in depths])
        ax.set_xlabel("depth N (number of blocks, log₂ scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="dots: single seeds", fontsize=8, title_fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("final training loss (cross-entropy, log scale)")
    ax_loss.set_title("Training loss vs depth")
    ax_acc.set_ylabel("test accuracy (fraction correct)")
    ax_acc.set_title("Test accuracy vs depth")
    fig.suptitle("Degradation: plain vs residual nets on the same field family, same budget")
    return fig


# ---------------------------------------------------------------------------------------------- gradient flow


def _gradient_runs(rows: list[Row], root: Path) -> dict[str, list[dict[str, Any]]] | None:
    runs = [m for m in _runs(rows, root) if _analysis(m, "gradients") or _analysis(m, "gradients_init")]
    return _group(runs) if runs else None


def _mean_curve(ms: list[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    curves = [_analysis(m, name) for m in ms]
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


@report.register_section("gradient_flow")
def gradient_flow_section(rows: list[Row], root: Path) -> list[str] | None:
    groups = _gradient_runs(rows, root)
    if groups is None:
        return None
    body = []
    for label, ms in groups.items():
        init, trained = _mean_curve(ms, "gradients_init"), _mean_curve(ms, "gradients")
        body.append([label, str(len(ms)), _ratio(init), _ratio(trained)])
    return [
        "## Gradient flow",
        "",
        "||dL/dx|| at the block's input x_0 and output x_N (mean per-sample norm over the analysis batch, mean "
        "over seeds), and their ratio: < 1 vanishing towards the input, > 1 exploding. ODE blocks: states at "
        "the analysis times.",
        "",
        *report._md_table(["model", "runs", "at init: ‖g_0‖ / ‖g_N‖", "trained: ‖g_0‖ / ‖g_N‖"], body),
    ]


@report.register_dir_plot("gradient_flow.png")
def gradient_flow_plot(rows: list[Row], root: Path) -> Figure | None:
    groups = _gradient_runs(rows, root)
    if groups is None:
        return None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    styles = ["-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2))]
    steps = sorted({(ms[0]["train"].get("steps") or 0) for ms in groups.values()})
    for ax, name, title in ((axes[0], "gradients_init", "at initialisation"), (axes[1], "gradients", "after training")):
        for label, ms in groups.items():
            curve = _mean_curve(ms, name)
            if curve is None:
                continue
            t, norms = curve
            block = ms[0]["train"].get("block")
            n = ms[0]["train"].get("steps") or 0
            positive = np.where(norms > 0, norms, np.nan)
            ax.plot(t, positive, color=BLOCK_COLORS.get(block), linestyle=styles[steps.index(n) % len(styles)],
                    marker="o" if len(t) <= 17 else None, markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("depth t = k h of the state x_k (T = 1; x_0 input, x_N output)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("‖dL/dx_k‖ (mean per-sample norm, log scale)")
    handles = report._legend_union(list(axes))
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", title="model", fontsize=8)
    fig.suptitle("Gradient flow: norm of the loss gradient at every state (mean over seeds; zeros not drawn)")
    return fig


# ---------------------------------------------------------------------------------------------- loss landscape


def _landscape_runs(rows: list[Row], root: Path) -> dict[str, list[dict[str, Any]]] | None:
    runs = [m for m in _runs(rows, root) if _analysis(m, "landscape") or _analysis(m, "sharpness")]
    return _group(runs) if runs else None


@report.register_section("loss_landscape")
def loss_landscape_section(rows: list[Row], root: Path) -> list[str] | None:
    groups = _landscape_runs(rows, root)
    if groups is None:
        return None
    body = []
    for label, ms in groups.items():
        sharp = [_analysis(m, "sharpness") or {} for m in ms]
        land = [_analysis(m, "landscape") for m in ms]
        centre = [s["slice_1d"][len(s["slice_1d"]) // 2] for s in land if s]
        edges = [max(s["slice_1d"][0], s["slice_1d"][-1]) for s in land if s]
        rough = [_roughness(s) for s in land if s]
        body.append([
            label, str(len(ms)),
            mean_std([m["train"].get("train_loss") for m in ms]),
            mean_std([_test(m).get("accuracy") for m in ms]),
            mean_std([s.get("top_eigenvalue") for s in sharp], "{:.4g}"),
            ", ".join("yes" if s.get("converged") else "no" for s in sharp),
            mean_std([s.get("trace") for s in sharp], "{:.4g}"),
            mean_std([s.get("trace_stderr") for s in sharp], "{:.2g}"),
            mean_std(centre, "{:.4g}"), mean_std(edges, "{:.4g}"), mean_std(rough, "{:.3g}"),
        ])
    return [
        "## Loss landscape and sharpness",
        "",
        "Top Hessian eigenvalue (power iteration on Hessian-vector products) and Hessian trace (Hutchinson, "
        "Rademacher probes, with its standard error) of the training loss on the analysis batch; 1D slice: "
        "filter-normalised random direction, loss at the centre and the larger of the two ends (±span); "
        "2D extra minima: local minima of the 2D slice (lower than their 4 grid neighbours) besides one: "
        "0 for a convex bowl, many for a chaotic landscape.",
        "",
        *report._md_table(
            ["model", "runs", "train loss", "test acc.", "top eigenvalue", "converged", "trace", "trace s.e.",
             "1D: loss at 0", "1D: loss at ±span", "2D extra minima"],
            body,
        ),
    ]


def _roughness(land: dict[str, Any]) -> float:
    """Local minima of the 2D slice (grid points lower than their 4 neighbours, edges excluded) besides the
    lowest one: 0 for a convex bowl; Li et al.'s chaotic landscapes have many."""
    z = np.asarray(land["slice_2d"], dtype=float)
    if z.shape[0] < 3:
        return float("nan")
    c = z[1:-1, 1:-1]
    minima = (c < z[:-2, 1:-1]) & (c < z[2:, 1:-1]) & (c < z[1:-1, :-2]) & (c < z[1:-1, 2:])
    return float(max(int(minima.sum()) - 1, 0))


@report.register_dir_plot("landscape_2d.png")
def landscape_2d_plot(rows: list[Row], root: Path) -> Figure | None:
    groups = _landscape_runs(rows, root)
    if groups is None:
        return None
    items = [(label, _analysis(ms[0], "landscape")) for label, ms in groups.items()]
    items = [(label, land) for label, land in items if land]
    if not items:
        return None
    cols = min(3, len(items))
    nrows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(4.4 * cols + 1.2, 4.0 * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, cols, squeeze=False).flat)
    all_z = np.concatenate([np.log10(np.asarray(land["slice_2d"], dtype=float)).ravel() for _, land in items])
    levels = np.linspace(np.nanmin(all_z), min(np.nanmax(all_z), np.nanmin(all_z) + 4), 21)
    mappable = None
    for ax, (label, land) in zip(axes, items):
        axis = np.asarray(land["axis"], dtype=float)
        z = np.log10(np.asarray(land["slice_2d"], dtype=float))
        mappable = ax.contourf(axis, axis, z.T, levels=levels, cmap=colormaps["viridis"], extend="max")
        ax.contour(axis, axis, z.T, levels=levels, colors="k", linewidths=0.3)
        ax.plot([0], [0], marker="*", color="white", markersize=10, markeredgecolor="black")
        ax.set_title(f"{label} (seed {ms_seed(groups[label])})", fontsize=10)
        ax.set_xlabel("α (direction 1, filter-normalised)")
        ax.set_ylabel("β (direction 2)")
        ax.set_aspect("equal")
    for ax in axes[len(items):]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes[: len(items)], label="log₁₀ training loss (shared scale, capped at +4 decades)")
    fig.suptitle("Loss landscape: 2D filter-normalised random slices around the trained weights (★)")
    return fig


def ms_seed(ms: list[dict[str, Any]]) -> Any:
    return ms[0].get("seed")


@report.register_dir_plot("landscape_1d.png")
def landscape_1d_plot(rows: list[Row], root: Path) -> Figure | None:
    groups = _landscape_runs(rows, root)
    if groups is None:
        return None
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax, ax_i = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    drawn = False
    for i, (label, ms) in enumerate(groups.items()):
        inter = _analysis(ms[0], "interpolation")
        if inter:
            ax_i.plot(inter["alphas"], inter["losses"], color=cmap(i % 10), label=label, marker="o", markersize=3)
    if ax_i.lines:
        ax_i.set_yscale("log")
        ax_i.axvline(0, color="grey", linewidth=0.8)
        ax_i.axvline(1, color="grey", linewidth=0.8)
        ax_i.set_xlabel("a: weights (1 − a) θ_init + a θ_trained (0 = init, 1 = trained)")
        ax_i.set_ylabel("training loss (cross-entropy, log scale)")
        ax_i.grid(True, alpha=0.3)
        ax_i.set_title("Linear interpolation from init to the trained weights")
    else:
        ax_i.set_visible(False)
    for i, (label, ms) in enumerate(groups.items()):
        for j, m in enumerate(ms):
            land = _analysis(m, "landscape")
            if land:
                ax.plot(land["alphas"], land["slice_1d"], color=cmap(i % 10), alpha=1.0 if j == 0 else 0.4,
                        label=label if j == 0 else None, marker="o", markersize=3)
                drawn = True
    if not drawn:
        return None
    ax.set_yscale("log")
    ax.set_xlabel("α (filter-normalised random direction; 0 = trained weights)")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="model", fontsize=8)
    ax.set_title("1D filter-normalised random slices (one line per seed)")
    return fig


# ---------------------------------------------------------------------------------------------- depth smoothness


def _depth_data(rows: list[Row], root: Path) -> dict[str, dict[int, list[dict[str, Any]]]] | None:
    by: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for m in _runs(rows, root):
        d = _analysis(m, "depth")
        if d is None:
            continue
        cfg_path = root / m["_dir"] / "config.yaml"
        task = _task_name(cfg_path)
        by.setdefault(task, {}).setdefault(int(d["layers"]), []).append(d)
    return by or None


def _task_name(cfg_path: Path) -> str:
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(cfg_path)
        f = cfg.field
        init = "zero init" if f.get("zero_init") else "tied init" if f.get("tied_init") else "i.i.d. init"
        return f"{cfg.field.kind} field on {cfg.data.name} ({init})"
    except Exception:
        return "?"


def _fit(ls: list[int], values: list[float]) -> str:
    pairs = [(x, v) for x, v in zip(ls, values) if v > 0]
    if len(pairs) < 2:
        return "–"
    f = loglog_slope([p[0] for p in pairs], [p[1] for p in pairs])
    return f"{f.slope:.3f} (R² {f.r2:.3f})"


@report.register_section("depth_smoothness")
def depth_section(rows: list[Row], root: Path) -> list[str] | None:
    by = _depth_data(rows, root)
    if by is None:
        return None
    lines = [
        "## Smoothness in depth",
        "",
        "θ_k: all parameters of step k flattened; max and RSS of ‖θ_{k+1} − θ_k‖ over k (mean over runs); "
        "slope: least-squares fit of log(value) against log L (−1: smooth limit, 0: no limit, "
        "Cohen et al.).",
        "",
    ]
    for task, d in sorted(by.items()):
        ls = sorted(d)
        maxes = [statistics.fmean(x["max"] for x in d[n]) for n in ls]
        rss = [statistics.fmean(x["rss"] for x in d[n]) for n in ls]
        lines += [f"### {task}", ""]
        lines += report._md_table(["L", "runs", "max increment", "RSS of increments"],
                                  [[str(n), str(len(d[n])), f"{a:.4g}", f"{b:.4g}"] for n, a, b in zip(ls, maxes, rss)])
        lines += [f"Log-log slope in L: max increment {_fit(ls, maxes)}; RSS {_fit(ls, rss)}.", ""]
    return lines


@report.register_dir_plot("depth_smoothness.png")
def depth_plot(rows: list[Row], root: Path) -> Figure | None:
    by = _depth_data(rows, root)
    if by is None or not any(len(d) > 1 for d in by.values()):
        return None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = colormaps["tab10"]
    for i, (task, d) in enumerate(sorted(by.items())):
        ls = sorted(d)
        for ax, key in zip(axes, ("max", "rss")):
            ys = [statistics.fmean(x[key] for x in d[n]) for n in ls]
            ax.plot(ls, ys, marker="o", color=cmap(i), linestyle="none", label=task)
            pairs = [(x, y) for x, y in zip(ls, ys) if y > 0]
            if len(pairs) >= 2:
                f = loglog_slope([p[0] for p in pairs], [p[1] for p in pairs])
                xs = np.asarray([p[0] for p in pairs], dtype=float)
                ax.plot(xs, np.exp(f.intercept) * xs**f.slope, color=cmap(i), linestyle="--",
                        label=f"fit: slope {f.slope:.2f}")
    for ax, title in zip(axes, ("max_k ‖θ_{k+1} − θ_k‖", "sqrt(Σ_k ‖θ_{k+1} − θ_k‖²)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L (number of steps, h = 1/L; log₂ scale)")
        ax.set_ylabel(f"{title} (log scale)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Smoothness in depth of trained untied ResNets: increments of the per-step weights vs depth")
    return fig
