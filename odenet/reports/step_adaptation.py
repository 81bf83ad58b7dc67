"""Tables and a figure for a step-size adaptation sweep, optionally against a grid search over fixed steps.

Registered when :mod:`odenet.reports` is imported, for reports holding runs trained with
``adaptation.enabled=true`` (their ``metrics.json``, ``history.csv`` and ``adaptation.csv``): the section
"Step-size adaptation" (:func:`adaptation_tables`: per-seed table and, with a grid search, the comparison) and
``step_adaptation.png`` (:func:`plot_adaptation`: h and NFE over training; test accuracy vs NFE for both).
The grid search is the ``summary.csv`` of a fixed-step sweep (``step_size_ablation``; a file or the folder
holding it) given as ``python -m odenet.report DIR --grid GRID``.

NFE are field evaluations per forward pass: for the adapted runs the mean over all training iterations
(what training cost) and the final one (what the trained model costs); the checks' own evaluations are
reported apart, as a fraction of the training forward NFE.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..integrator import Integrator, fmt_h
from ..runner.io import read_csv
from .chance import MARK, Withheld, withheld_line
from .collect import SUMMARY, ReportContext, run_beats_baseline
from .registry import Section, register_plot, register_section
from .stats import Stats, sort_value, stats

__all__ = ["adapted_runs", "load_grid", "adaptation_tables", "plot_adaptation", "adaptation_section",
           "load_adapted", "protocol_comparison"]

log = logging.getLogger(__name__)


def _num(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def adapted_runs(ctx: ReportContext) -> list[dict[str, Any]]:
    """One dict per finished adapted run of the report: seed, summary, evaluations, history, decisions."""
    runs = []
    for run_dir, folder in ctx.run_dirs():
        metrics = folder.metrics or {}
        adaptation = (metrics.get("train") or {}).get("adaptation")
        if metrics.get("status") != "ok" or not adaptation:
            continue
        history = folder.history
        runs.append({
            "run_dir": folder.path,
            "dir": run_dir,
            "at_chance": run_beats_baseline(metrics) is False,
            "seed": metrics.get("seed"),
            "adaptation": adaptation,
            "evaluations": {
                (ev["test_solver"], bool(ev.get("is_train_solver"))): ev
                for ev in metrics.get("evaluations") or [] if ev.get("status") == "ok"
            },
            "history": history,
            "decisions": folder.adaptation,
            "seconds": _num(history[-1].get("seconds")) if history else None,
        })
    runs.sort(key=lambda r: (r["seed"] is None, sort_value(r["seed"])))
    return runs


Grid = dict[Any, dict[str, dict[Any, float]]]
#: Adaptive test solvers kept by :func:`load_grid` for fixed-step models (accuracy of the field's ODE solution).
ADAPTIVE_TEST = ("dopri5",)


def load_grid(path: str | Path) -> Grid:
    """From a fixed-step sweep's ``summary.csv``: ``{N: {"train": {seed: acc}, "midpoint": {...}, "nfe": {...}}}``
    for euler-trained models at N steps, and ``{"dopri5": {...}}`` for models trained through an adaptive solver.

    ``train`` is the test accuracy under the training solver, ``nfe`` its NFE per forward, ``at_chance`` whether
    that model did not beat its majority-class baseline (the ``beats_baseline`` column), ``h`` its
    ``train_step_size``, the other keys the accuracy under that test solver at the training step size. The
    reference (``dopri5``) of a seed evaluated at several tolerances is the one at the tightest ``rtol``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY
    grid: Grid = {}
    tightest: dict[tuple[Any, str, Any], float] = {}  # rtol of the reference kept per (N, solver, seed)
    for r in read_csv(p):
        n, acc = _num(r.get("train_steps")), _num(r.get("accuracy"))
        if acc is None or r.get("status") != "ok":
            continue
        train = Integrator.from_record(r.get("train_solver") or None, r.get("train_steps"), r.get("train_step_size"))
        if train is None:
            continue
        if train.name == "euler" and n is not None:
            key: Any = int(n)
        elif train.adaptive:
            key = train.name  # trained through an adaptive solver
        else:
            continue
        cell, seed = grid.setdefault(key, {}), r.get("seed")
        if r.get("is_train_solver") == "True":
            cell.setdefault("train", {})[seed] = acc
            cell.setdefault("at_chance", {})[seed] = r.get("beats_baseline") == "False"
            cell.setdefault("nfe", {})[seed] = _num(r.get("nfe")) or math.nan
            cell.setdefault("h", {})[seed] = _num(r.get("train_step_size"))
        elif isinstance(key, int) and _num(r.get("test_steps")) == n:
            cell.setdefault(str(r["test_solver"]), {})[seed] = acc
        elif isinstance(key, int) and r.get("test_solver") in ADAPTIVE_TEST:  # the reference ODE solution
            solver, rtol = str(r["test_solver"]), _num(r.get("rtol"))
            rtol = math.inf if rtol is None else rtol
            if rtol < tightest.get((key, solver, seed), math.nan) or (key, solver, seed) not in tightest:
                tightest[(key, solver, seed)] = rtol
                cell.setdefault(solver, {})[seed] = acc
    return dict(sorted(grid.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def grid_h(n: int, *cells: dict[str, dict[Any, float]]) -> float:
    """The training step size of the grid cells of ``N = n``: their recorded ``train_step_size`` when all seeds
    agree, else ``T / N`` (``T = 1``)."""
    hs = {h for cell in cells for h in cell.get("h", {}).values() if h is not None and not math.isnan(h)}
    return hs.pop() if len(hs) == 1 else 1.0 / n


def _pct(s: Stats | None) -> str:
    if s is None:
        return "–"
    return f"{100 * s.mean:.1f}" if s.std is None else f"{100 * s.mean:.1f} ± {100 * s.std:.1f}"


def _f(s: Stats | None, digits: int = 1) -> str:
    if s is None:
        return "–"
    return f"{s.mean:.{digits}f}" if s.std is None else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def _acc(run: dict[str, Any], solver: str, train: bool = False) -> float | None:
    ev = run["evaluations"].get((solver, train))
    return None if ev is None else ev.get("accuracy")


def _train_nfe(run: dict[str, Any]) -> float | None:
    """NFE per forward of the trained model under its training solver (at the final h)."""
    return (run["evaluations"].get((run["adaptation"]["solver"], True)) or {}).get("nfe")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


TEST_SOLVERS = ("euler", "midpoint", "rk4", "dopri5")


def adaptation_tables(runs: Sequence[dict[str, Any]], grid: Grid | None = None) -> str:
    """Markdown: one row per adapted run (and their mean), then the comparison with the grid search."""
    lines = [
        "Accuracy: test set, in %, under each solver at the final h (dopri5: rtol 1e-6). NFE: field evaluations "
        "per forward pass. h: the training step at the start and at the end (N = ceil(T / h) grid steps). "
        "halve / grow / reject: checks that halved h, grew it, or tried to grow it and kept it. Check NFE: the "
        "checks' own forward evaluations, as % of all training forward evaluations.",
        "",
        _row(["seed", "h start -> end (N end)", "smallest h", "mean train NFE", "final NFE", "halve / grow / reject",
              "check NFE", *(f"{s} acc" + (" (train)" if s == "euler" else "") for s in TEST_SOLVERS),
              "train time (s)"]),
        "|" + "---|" * 12,
    ]
    for run in runs:
        a = run["adaptation"]
        final_nfe = _train_nfe(run)
        lines.append(_row([
            str(run["seed"]) + (f" {MARK}" if run.get("at_chance") else ""),
            f"{fmt_h(a['initial_step_size'])} -> {a['final_step_size']:.4g} ({a['final_steps']})",
            f"{a['min_step_size_used']:.4g}",
            f"{a['nfe_forward_mean']:.1f}",
            f"{final_nfe:g}" if final_nfe is not None else "–",
            f"{a['halve_count']} / {a['grow_count']} / {a['reject_growth_count']}",
            f"{100 * a['check_nfe'] / max(1, a['nfe_forward_total']):.1f}%",
            *(_pct(stats([_acc(run, s, s == a["solver"])])) for s in TEST_SOLVERS),
            f"{run['seconds']:.1f}" if run["seconds"] is not None else "–",
        ]))
    if len(runs) > 1:
        solver = runs[0]["adaptation"]["solver"]
        lines.append(_row([
            "mean ± std",
            "end " + _f(stats(r["adaptation"]["final_step_size"] for r in runs), 4),
            _f(stats(r["adaptation"]["min_step_size_used"] for r in runs), 4),
            _f(stats(r["adaptation"]["nfe_forward_mean"] for r in runs)),
            _f(stats(_train_nfe(r) for r in runs)),
            "",
            "",
            *(_pct(stats(_acc(r, s, s == solver) for r in runs)) for s in TEST_SOLVERS),
            _f(stats(r["seconds"] for r in runs)),
        ]))
    lines.append("")
    if grid:
        lines += [
            "### Against the grid search (euler trained at fixed N)",
            "",
            _row(["training", "NFE per forward in training", "NFE of the trained model", "accuracy, training solver",
                  "accuracy, midpoint at the training h", "seeds"]),
            "|" + "---|" * 6,
        ]
        for n, cell in grid.items():
            nfe = _f(stats(cell.get("nfe", {}).values()), 0)
            if isinstance(n, int):
                label, train_nfe = f"euler N={n} (h={fmt_h(grid_h(n, cell))})", nfe
            else:
                label, train_nfe = f"{n} (adaptive; NFE at its training tolerance)", "–"
            lines.append(_row([label, train_nfe, nfe, _pct(stats(cell.get("train", {}).values())),
                               _pct(stats(cell.get("midpoint", {}).values())), str(len(cell.get("train", {})))]))
        if runs:
            solver = runs[0]["adaptation"]["solver"]
            lines.append(_row([
                f"**{solver}, adapted h**",
                _f(stats(r["adaptation"]["nfe_forward_mean"] for r in runs)),
                _f(stats(_train_nfe(r) for r in runs)),
                _pct(stats(_acc(r, solver, True) for r in runs)),
                _pct(stats(_acc(r, "midpoint") for r in runs)),
                str(len(runs)),
            ]))
        lines += ["", *_per_seed_table(runs, grid)]
    return "\n".join(lines)


def _per_seed_table(runs: Sequence[dict[str, Any]], grid: Grid) -> list[str]:
    """Accuracy per seed (the same seed: the same initial weights and batches): training solver / midpoint."""
    keys = list(grid)
    header = ["seed", *(f"euler N={k}" if isinstance(k, int) else str(k) for k in keys), "adapted (mean train NFE)"]
    lines = [
        "### Per seed",
        "",
        "Test accuracy in %, `training solver / midpoint at the training h` (trained through an adaptive solver: "
        "its own accuracy). A seed is the same initial weights and batch order in both sweeps.",
        "",
        _row(header),
        "|" + "---|" * len(header),
    ]
    seeds = sorted({str(r["seed"]) for r in runs} | {s for c in grid.values() for s in c.get("train", {})},
                   key=lambda v: (len(v), v))
    by_seed = {str(r["seed"]): r for r in runs}
    for seed in seeds:
        cells = [seed]
        for k in keys:
            train, mid = grid[k].get("train", {}).get(seed), grid[k].get("midpoint", {}).get(seed)
            text = "–" if train is None else f"{100 * train:.1f}" + (
                f" {MARK}" if grid[k].get("at_chance", {}).get(seed) else "")
            cells.append(text if mid is None or train is None else f"{text} / {100 * mid:.1f}")
        run = by_seed.get(seed)
        if run is None:
            cells.append("–")
        else:
            a = run["adaptation"]
            train, mid = _acc(run, a["solver"], True), _acc(run, "midpoint")
            cells.append(f"{100 * train:.1f}{f' {MARK}' if run.get('at_chance') else ''} / {100 * mid:.1f} "
                         f"({a['nfe_forward_mean']:.1f})" if train is not None and mid is not None else "–")
        lines.append(_row(cells))
    return lines + [""]


def plot_adaptation(runs: Sequence[dict[str, Any]], grid: Grid | None = None) -> Figure:
    """h and NFE over training per seed; test accuracy vs NFE for the adapted runs and the grid search."""
    cmap = colormaps["tab10"]
    fig = Figure(figsize=(15.5, 4.6), layout="constrained")
    ax_h, ax_nfe, ax_acc = fig.subplots(1, 3)
    for i, run in enumerate(runs):
        color = cmap(i % 10)
        label = f"adapted, seed {run['seed']}"
        d = run["decisions"]
        if d:
            its = [0] + [int(_num(r["iteration"]) or 0) for r in d]
            hs = [_num(d[0]["step_size"])] + [_num(r["new_step_size"]) for r in d]
            ax_h.step(its, hs, where="post", color=color, label=label)
            halves = [(int(_num(r["iteration"]) or 0), _num(r["new_step_size"])) for r in d if r["action"] == "halve"]
            if halves:
                ax_h.plot(*zip(*halves), "v", color=color, markersize=5)
        hist = run["history"]
        if hist and "nfe_forward_mean" in hist[0]:
            ax_nfe.plot([_num(r["iteration"]) for r in hist], [_num(r["nfe_forward_mean"]) for r in hist],
                        color=color, label=label)
        a = run["adaptation"]
        acc = _acc(run, a["solver"], True)
        if acc is not None:
            ax_acc.plot([a["nfe_forward_mean"]], [100 * acc], marker="*", markersize=14, color=color,
                        markeredgecolor="black", linestyle="none", label=f"{label} (mean train NFE)", zorder=4)
        mid = _acc(run, "midpoint")
        if mid is not None:
            ax_acc.plot([a["nfe_forward_mean"]], [100 * mid], marker="o", markersize=6, color=color,
                        markerfacecolor="none", linestyle="none", zorder=4)
    if grid:
        for name in (k for k in grid if isinstance(k, str)):
            acc_s, nfe_s = stats(grid[name].get("train", {}).values()), stats(grid[name].get("nfe", {}).values())
            if acc_s is not None and nfe_s is not None:
                ax_acc.plot([nfe_s.mean], [100 * acc_s.mean], "D", color="grey",
                            label=f"trained through {name}, mean of seeds")
        ns = [k for k in grid if isinstance(k, int)]
        for key, style, label in (("train", "-o", "grid search: euler (train solver), mean of seeds"),
                                  ("midpoint", "--s", "grid search: midpoint at the training h, mean")):
            pts = [(n, stats(grid[n].get(key, {}).values())) for n in ns]
            pts = [(n, s) for n, s in pts if s is not None]
            if pts:
                ax_acc.plot([n for n, _ in pts], [100 * s.mean for _, s in pts], style, color="grey",
                            markerfacecolor="none" if key == "midpoint" else "grey", label=label)
        for n in ns:
            ax_h.axhline(1 / n, color="grey", linewidth=0.5, alpha=0.5)
    ax_acc.plot([], [], "o", color="black", markerfacecolor="none", label="adapted: midpoint at the final h")
    ax_h.set(xlabel="training iteration", ylabel="step size h (log₂ scale)" + ("; grey: grid 1/N" if grid else ""),
             title="Training step size (▼: halved)")
    ax_nfe.set(xlabel="training iteration", ylabel="NFE per forward (mean over each log window)",
               title="Training cost")
    ax_acc.set(xlabel="NFE per forward (log₂ scale)", ylabel="test accuracy (%)",
               title="Test accuracy vs NFE")
    _log2_axis(ax_h, "y", fmt_h)
    _log2_axis(ax_acc, "x", lambda v: f"{v:g}")
    for ax in (ax_h, ax_nfe, ax_acc):
        ax.grid(True, alpha=0.3)
    if ax_h.get_legend_handles_labels()[0]:
        ax_h.legend(fontsize=8)
    ax_acc.legend(fontsize=7, loc="lower right")
    fig.suptitle("Step-size adaptation during training (Ott et al. 2021)", fontsize=11)
    return fig


def _log2_axis(ax: Any, which: str, label: Any) -> None:
    """Log2 scale on ``ax``'s ``which`` ("x" or "y") axis, a labelled tick at each power of 2 in the data range."""
    getattr(ax, f"set_{which}scale")("log", base=2)
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    ticks = [2.0**k for k in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1) if lo <= 2.0**k <= hi]
    if ticks:
        getattr(ax, f"set_{which}ticks")(ticks, [label(t) for t in ticks])
    getattr(ax, f"{which}axis").set_minor_locator(NullLocator())


def _grid(ctx: ReportContext) -> Grid | None:
    if ctx.grid is None:
        return None

    def load() -> Grid:
        grid = load_grid(ctx.grid)  # type: ignore[arg-type]
        if not grid:
            log.warning("--grid %s: no euler-trained fixed-step rows (nothing to compare with)", ctx.grid)
        return grid

    return ctx.cached("step_adaptation grid", load) or None


@register_section("step adaptation")
def adaptation_section(ctx: ReportContext) -> list[str] | None:
    """Report section: :func:`adaptation_tables` of the adapted runs, against ``--grid`` when given (None: no
    adapted run)."""
    runs = adapted_runs(ctx)
    if not runs:
        return None
    grid = _grid(ctx)
    lines = ["## Step-size adaptation", "", *adaptation_tables(runs, grid).split("\n")]
    chance = sum(r["at_chance"] for r in runs)
    total = len(runs)
    for cell in (grid or {}).values():
        flags = cell.get("at_chance", {})
        chance, total = chance + sum(flags.values()), total + len(flags)
    if not chance:
        return lines
    what = "Adapted step size against the grid search" if grid else "Adapted step size against fixed steps"
    text = withheld_line(what, Withheld(chance, total))
    return Section([*lines, text, ""], [text])


@register_plot("step_adaptation.png")
def adaptation_plot(ctx: ReportContext) -> Figure | None:
    """:func:`plot_adaptation` of the adapted runs (None: no adapted run)."""
    runs = adapted_runs(ctx)
    return plot_adaptation(runs, _grid(ctx)) if runs else None


# ----------------------------------------------------------------------------------------------
# The same experiment under several protocols (e.g. ours and Ott et al.'s published one), side by side


def load_adapted(path: str | Path) -> dict[Any, dict[str, float]]:
    """From an adaptation sweep's ``summary.csv``: ``{seed: {"h": final h, "nfe": its NFE, "<solver>": accuracy}}``
    (the training solver's accuracy under ``"train"``)."""
    p = Path(path)
    out: dict[Any, dict[str, float]] = {}
    for r in read_csv(p / SUMMARY if p.is_dir() else p):
        acc = _num(r.get("accuracy"))
        if acc is None or r.get("status") != "ok" or r.get("train_solver") != "euler":
            continue
        cell = out.setdefault(r.get("seed"), {})
        if r.get("is_train_solver") == "True":
            h, n = _num(r.get("train_step_size")), _num(r.get("train_steps"))
            if h is None:  # h = T / N (T = 1) when snapped and no step size was recorded
                h = 1.0 / n if n else math.nan
            cell.update(train=acc, h=h, nfe=_num(r.get("nfe")) or math.nan)
        else:
            cell[str(r["test_solver"])] = acc
    return out


def protocol_comparison(protocols: dict[str, Path]) -> list[str]:
    """Markdown: one row per protocol of adapted runs: seeds, final h and NFE, accuracy under the training solver and
    dopri5 (%, mean ± std over seeds), and the paired change training solver -> dopri5 (points); all over the
    complete seeds (those with both accuracies), which ``seeds`` counts."""
    lines = ["| protocol | seeds | final h | final NFE | accuracy, training solver | accuracy, dopri5 | "
             "training -> dopri5 (points, paired) |", "|---|---|---|---|---|---|---|"]
    for name, path in protocols.items():
        runs = [c for c in load_adapted(path).values() if "dopri5" in c and "train" in c]  # complete seeds only
        gaps = [100 * (c["dopri5"] - c["train"]) for c in runs]
        lines.append(_row([
            name, str(len(runs)), _f(stats(c.get("h") for c in runs), 4), _f(stats(c.get("nfe") for c in runs)),
            _pct(stats(c["train"] for c in runs)), _pct(stats(c["dopri5"] for c in runs)), _f(stats(gaps)),
        ]))
    return lines

