"""Report sections and plots for the ``degradation`` experiments (He et al. 2016): do deeper plain nets train worse
while residual ones do not?

Registered when :mod:`odenet.reports` is imported. Each reads the runs' ``metrics.json`` (its ``train``
description: block, steps, final training loss; the evaluation under the training solver) and returns ``None``
unless the sweep holds plain and residual nets at two or more depths each (classification). ``degradation`` covers
odenet's stacks (h = 1/N, ``model.arch=odenet``), ``degradation_he`` He et al.'s staged net at h = 1
(``model.arch=he``, depth ``6n + 2 = 2 steps + 2``) with paired residual - plain and deeper - shallower differences.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from ..runner.rundir import RunDirError
from .chance import label_mark, mark_cell, value_at_chance, withheld_section
from .collect import ReportContext
from .markdown import md_table
from .registry import Section, register_plot, register_section
from .runs import BLOCK_COLORS, Run, ok_runs
from .stats import mean_std, paired, paired_text

ByDepth = dict[str, dict[int, list[Run]]]


def arch(m: Run) -> str:
    """The run's ``model.arch`` (``odenet`` when its folder holds no config)."""
    try:
        return str(m.cfg.model.get("arch", "odenet"))
    except RunDirError:
        return "odenet"


def _stack_runs(ctx: ReportContext, he: bool = False) -> list[Run]:
    return [m for m in ok_runs(ctx) if m.train.get("block") in ("plain", "residual") and m.train.get("steps")
            and m.metrics.get("task", "classification") == "classification" and (arch(m) == "he") == he]


def _by_block_and_depth(runs: list[Run], depth: Callable[[int], int] = int) -> ByDepth | None:
    """block -> depth -> runs; None unless plain and residual nets each come at two depths or more."""
    by: ByDepth = {}
    for m in runs:
        by.setdefault(m.train["block"], {}).setdefault(depth(int(m.train["steps"])), []).append(m)
    if len(by) < 2 or not all(len(d) > 1 for d in by.values()):
        return None
    return by


def _degradation_data(ctx: ReportContext) -> ByDepth | None:
    by = _by_block_and_depth(_stack_runs(ctx))
    if by is None:
        return None
    if any(len({m.train.get("step_size") for m in ms}) > 1 for d in by.values() for ms in d.values()):
        return None  # two step sizes at one depth (e.g. block_lesion's h = 1 and h = 1/N arms): not one curve each
    return by


#: Config keys that tell the cells of a degradation sweep apart (or vary with the seed): not compared.
CELL_KEYS = ("block.kind", "solver.steps", "device", "threads", "logger")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _setting(m: Run) -> dict[str, Any] | None:
    """The run's resolved config without :data:`CELL_KEYS` and seeds (None: its folder holds no readable config)."""
    try:
        flat = _flatten(OmegaConf.to_container(m.cfg, resolve=True))
    except RunDirError:
        return None
    return {k: v for k, v in flat.items() if k not in CELL_KEYS and "seed" not in k.rsplit(".", 1)[-1].lower()}


def unlike_runs(by: ByDepth) -> str | None:
    """Why the runs of ``by`` cannot be compared like with like (None: they can): runs whose configs differ beyond
    block, depth and seed (the keys and their values named), or two runs of one seed in one cell."""
    runs = [m for d in by.values() for ms in d.values() for m in ms]
    settings = [_setting(m) for m in runs]
    known = [x for x in settings if x is not None]
    keys = sorted({k for x in known for k in x if len({repr(y.get(k)) for y in known}) > 1})
    if keys or (known and len(known) < len(settings)):
        diff = "; ".join(f"{k}: {', '.join(sorted({repr(x.get(k)) for x in known}))}" for k in keys[:5])
        return ("Not compared: the runs differ in config beyond block, depth and seed"
                + (f" ({diff}{'; ...' if len(keys) > 5 else ''})" if diff else " (some have no config)")
                + "; report one setting per sweep.")
    for b, d in by.items():
        for n, ms in d.items():
            seeds = [m.seed for m in ms]
            twice = sorted({str(x) for x in seeds if seeds.count(x) > 1})
            if twice:
                return f"Not compared: {b} at depth {n} has more than one run of seed {', '.join(twice)}."
    return None


def _refused(heading: str, note: str) -> Section:
    return Section([heading, "", note, ""], [note])


def _resting_on_controls(ctx: ReportContext, by: ByDepth, lines: list[str], what: str) -> list[str]:
    """``lines``, or with the comparison withheld when a control is at chance: every residual net and the shallowest
    plain net must have trained (a deeper plain net at chance is what degradation looks like at its worst)."""
    controls = [m.run_dir for b, d in by.items() for n, ms in d.items() for m in ms if b != "plain" or n == min(d)]
    return withheld_section(ctx, lines, what, controls)


def he_depth(steps: int) -> int:
    """He et al.'s depth ``6 n + 2`` of a staged net of ``steps = 3 n`` blocks."""
    return 2 * steps + 2


def _he_data(ctx: ReportContext) -> ByDepth | None:
    return _by_block_and_depth(_stack_runs(ctx, he=True), he_depth)


def _train_loss(m: Run) -> float | None:
    return m.train.get("train_loss")


def _train_error(m: Run) -> float | None:
    acc = m.train.get("train_accuracy")
    return None if acc is None else 100.0 * (1.0 - acc)


def _test_error(m: Run) -> float | None:
    acc = m.train_eval().get("accuracy")
    return None if acc is None else 100.0 * (1.0 - acc)


def _by_seed(runs: list[Run], get: Callable[[Run], float | None]) -> dict[object, float | None]:
    """seed -> ``get(run)`` (one run per seed: :func:`unlike_runs` refuses a cell with two)."""
    return {m.seed: get(m) for m in runs}


HE_METRICS: tuple[tuple[str, Callable[[Run], float | None], str], ...] = (
    ("train loss", _train_loss, "{:.2e}"), ("train error %", _train_error, "{:.2f}"),
    ("test error %", _test_error, "{:.2f}"))


@register_section("degradation_he")
def degradation_he_section(ctx: ReportContext) -> list[str] | None:
    """He et al.'s staged nets at h = 1: training loss, training and test error against depth, plain vs residual;
    the paired (by seed) residual - plain differences, and each block's change from depth 20 (or the shallowest)."""
    by = _he_data(ctx)
    if by is None:
        return None
    if note := unlike_runs(by):
        return _refused("## Degradation at h = 1 (He et al.'s staged net)", note)
    depths = sorted({n for d in by.values() for n in d})
    blocks = [b for b in ("plain", "residual") if b in by]
    header = ["depth 6n+2"] + [f"{b}: {name}" for name, _, _ in HE_METRICS for b in blocks]
    body = []
    for n in depths:
        cells = [str(n) + label_mark(ctx, [m.run_dir for b in blocks for m in by[b].get(n, [])])]
        cells += [mean_std([get(m) for m in by[b].get(n, [])], fmt) for _, get, fmt in HE_METRICS for b in blocks]
        body.append(cells)
    diff_header = ["depth 6n+2"] + [f"residual − plain: {name}" for name, _, _ in HE_METRICS]
    diff_body = [[str(n)] + [paired_text(paired(_by_seed(by["residual"].get(n, []), get),
                                                _by_seed(by["plain"].get(n, []), get)), fmt.replace(":", ":+"))
                             for _, get, fmt in HE_METRICS] for n in depths]
    ref = 20 if all(20 in d for d in by.values()) else min(depths)
    depth_header = ["block", "depth"] + [f"{name} − depth {ref}" for name, _, _ in HE_METRICS]
    depth_body = [[b, str(n)] + [paired_text(paired(_by_seed(by[b][n], get), _by_seed(by[b].get(ref, []), get)),
                                             fmt.replace(":", ":+")) for _, get, fmt in HE_METRICS]
                  for b in blocks for n in depths if n != ref and n in by[b]]
    seeds = max(len(v) for d in by.values() for v in d.values())
    lines = [
        "## Degradation at h = 1 (He et al.'s staged net)",
        "",
        "Train loss: mean cross-entropy of the final model (eval mode, BN running statistics) on the whole training "
        f"set; errors in %. Mean ± sample std over up to {seeds} seeds.",
        "",
        *md_table(header, body),
        "",
        "Paired by seed (mean ± std of the per-seed differences; how many of them are > 0):",
        "",
        *md_table(diff_header, diff_body),
        "",
        *md_table(depth_header, depth_body),
    ]
    return _resting_on_controls(ctx, by, lines, "Degradation at h = 1: plain vs residual in depth")


@register_section("degradation")
def degradation_section(ctx: ReportContext) -> list[str] | None:
    """Final training loss (whole training set) and test accuracy against depth, plain vs residual."""
    by = _degradation_data(ctx)
    if by is None:
        return None
    if note := unlike_runs(by):
        return _refused("## Degradation (plain vs residual)", note)
    depths = sorted({n for d in by.values() for n in d})
    blocks = [b for b in ("plain", "residual") if b in by]
    header = ["depth N"] + [f"{b}: train loss" for b in blocks] + [f"{b}: test acc." for b in blocks]
    body = []
    for n in depths:
        cells = [str(n) + label_mark(ctx, [m.run_dir for b in blocks for m in by[b].get(n, [])])]
        cells += [mean_std([m.train.get("train_loss") for m in by[b].get(n, [])]) for b in blocks]
        for b in blocks:
            ms = by[b].get(n, [])
            acc = [m.train_eval().get("accuracy") for m in ms]
            cells.append(mark_cell(mean_std(acc), value_at_chance(acc, [m.baseline for m in ms])))
        body.append(cells)
    seeds = max(len(v) for d in by.values() for v in d.values())
    lines = [
        "## Degradation (plain vs residual)",
        "",
        f"Training loss: mean cross-entropy of the final model on the whole training set; test accuracy under "
        f"the training solver. Mean ± sample std over up to {seeds} seeds.",
        "",
        *md_table(header, body),
    ]
    return _resting_on_controls(ctx, by, lines, "Degradation: plain vs residual in depth")


def _depth_plot(by: ByDepth, series: tuple[tuple[str, Callable[[Run], float | None], bool], ...], log_x: bool,
                xlabel: str, title: str) -> Figure:
    """One panel per (y label, getter, log y) in ``series`` against depth, a line per block, dots for single seeds."""
    fig = Figure(figsize=(5.5 * len(series), 4.2), layout="constrained")
    axes = fig.subplots(1, len(series))
    depths = sorted({n for d in by.values() for n in d})
    for ax, (ylabel, get, log_y) in zip(axes, series):
        for b, d in sorted(by.items()):
            ns = sorted(d)
            vals = [[v for v in (get(m) for m in d[n]) if v is not None] for n in ns]
            means = [statistics.fmean(v) if v else float("nan") for v in vals]
            ax.plot(ns, means, marker="o", color=BLOCK_COLORS.get(b), label=f"{b} (mean)")
            for n, v in zip(ns, vals):
                ax.scatter([n] * len(v), v, color=BLOCK_COLORS.get(b), s=12, alpha=0.4)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(n) for n in depths])
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        ax.legend(title="dots: single seeds", fontsize=8, title_fontsize=8)
        if log_y:
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} vs depth")
    fig.suptitle(title)
    return fig


@register_plot("degradation.png")
def degradation_plot(ctx: ReportContext) -> Figure | None:
    """Final training loss and test accuracy against depth, one line per block kind, dots for single seeds."""
    by = _degradation_data(ctx)
    if by is None or unlike_runs(by):
        return None
    return _depth_plot(
        by, (("final training loss (cross-entropy, log scale)", _train_loss, True),
             ("test accuracy (fraction correct)", lambda m: m.train_eval().get("accuracy"), False)),
        True, "depth N (number of blocks, log₂ scale)",
        "Degradation: plain vs residual nets on the same field family, same budget")


@register_plot("degradation_he.png")
def degradation_he_plot(ctx: ReportContext) -> Figure | None:
    """He et al.'s staged nets: training loss, training error and test error against depth 6n + 2."""
    by = _he_data(ctx)
    if by is None or unlike_runs(by):
        return None
    return _depth_plot(
        by, (("final training loss (cross-entropy, log scale)", _train_loss, True),
             ("training error (%)", _train_error, False), ("test error (%)", _test_error, False)),
        False, "depth 6n + 2 (layers)", "Degradation at h = 1: He et al.'s plain vs residual nets, same budget")
