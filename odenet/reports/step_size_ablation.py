"""The step-size ablation of Ott et al. (ICLR 2021), "ResNet After All?": is a trained ResNet an ODE?

A model trained with a fixed-step scheme at step size ``h`` is *an ODE model* when re-integrating
its field with a finer solver leaves its accuracy unchanged. This module measures that:

* :func:`critical_step_sizes` — from summary rows (:func:`odenet.reports.collect`): for every
  training step size, the largest accuracy gap between the training solver and any *finer* test
  solver (:func:`is_finer`), and the critical step size: the largest training ``h`` at which, and
  at every smaller trained ``h``, all finer solvers stay within ``tolerance`` (1 point) of it.
* :func:`step_factor_table` — accuracy per training ``N`` x test solver x step factor;
  :func:`fixed_grid_table` — adaptively trained models re-integrated with ``N`` fixed steps.

Registered when :mod:`odenet.reports` is imported, it adds "Critical step size", "Step factors" and
"Adaptively trained models on a fixed grid" sections to ``report.md`` of any report whose data fit them
(fixed-step training at two or more step sizes). The folds of the step map and the pictures in the input
plane (``plane_large_vs_small_step.png``) are in :mod:`odenet.reports.plane`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..integrator import fmt_h
from ..solvers import SCHEMES
from .chance import (
    MARK,
    Withheld,
    cell_at_chance,
    label_mark_rows,
    mark_cell,
    rows_at_chance,
    value_at_chance,
    withheld_line,
    withhold_rows,
)
from .collect import ReportContext, Row
from .markdown import eval_label, fmt, fmt_stats, md_table, model_label
from .registry import Section, register_section
from .stats import (
    adaptive_eval,
    adaptive_train,
    eval_key,
    group,
    model_key,
    setting_keys,
    sort_key,
    sort_value,
    stats,
)

#: One accuracy point: the largest gap between training and finer solver at which a step size passes.
TOLERANCE = 0.01
#: The step factors of ``conf/evaluation/step_factors.yaml``: test step = factor x training step.
STEP_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


# ----------------------------------------------------------------------------------------------
# Which test solvers are finer than the training solver


def solver_order(name: str | None) -> int | None:
    """Convergence order of a fixed-step scheme (``euler`` 1, ``midpoint`` 2, ``rk4`` 4); None otherwise."""
    tableau = SCHEMES.get(str(name))
    return tableau.order if tableau is not None else None


def is_finer(row: Row) -> bool:
    """Whether the row's test solver integrates the field at least as accurately as the training one.

    Finer: an adaptive test solver (dopri5 at a tight tolerance), or a fixed scheme of at least the
    training scheme's order at a step no larger than the training step, other than the training
    solver itself (euler at h/2, midpoint or rk4 at h, rk4 at h/2, ...). Rows of models trained
    with an adaptive solver are never compared (they have no training step size).
    """
    if row["is_train_solver"] or row["train_step_size"] is None:
        return False
    if adaptive_eval(row):
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
    at_chance: int = 0  # of the runs at this h with a training accuracy, those that did not beat their baseline
    runs: int = 0  # the runs at this h with a training accuracy
    baseline: float | None = None  # their mean majority-class baseline accuracy (None: not recorded)


@dataclass(frozen=True)
class CriticalStepSize:
    """The checks of one fixed-step training solver (and swept setting), smallest step size first."""

    train_solver: str
    setting: str  # further swept settings of these models ("" when none)
    tolerance: float
    checks: tuple[StepCheck, ...]
    withheld: Withheld | None = None  # some models of the family are at chance: no critical step size is stated

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
    settings = setting_keys(rows)
    ok = [r for r in rows if r["status"] == "ok" and r["accuracy"] is not None and r["train_step_size"] is not None]
    families: dict[tuple[Any, ...], list[Row]] = {}
    for r in ok:
        families.setdefault((r["train_solver"], tuple(r[k] for k in settings)), []).append(r)
    results = []
    for (train_solver, extra), family in sorted(families.items(), key=lambda kv: sort_key(kv[0])):
        by_h: dict[float, list[Row]] = {}
        for r in family:
            by_h.setdefault(float(r["train_step_size"]), []).append(r)
        if len(by_h) < 2:
            continue
        checks = [c for h in sorted(by_h) if (c := _check(train_solver, h, by_h[h], rows, tolerance)) is not None]
        if not any(c.worst_solver is not None for c in checks):
            continue
        setting = ", ".join(f"{k}={fmt(v)}" for k, v in zip(settings, extra))
        results.append(CriticalStepSize(str(train_solver), setting, tolerance, tuple(checks), withhold_rows(family)))
    return results


def _check(train_solver: str, h: float, rows: list[Row], all_rows: Sequence[Row], tolerance: float) -> StepCheck | None:
    train = {r["seed"]: float(r["accuracy"]) for r in rows if r["is_train_solver"]}
    if not train:
        return None
    finer: dict[tuple[Any, ...], dict[Any, float]] = {}
    for r in rows:
        if is_finer(r) and r["seed"] in train:
            finer.setdefault(eval_key(r), {})[r["seed"]] = float(r["accuracy"])
    run_dirs = {r["run_dir"] for r in rows}
    failed = sum(
        1
        for r in all_rows
        if r["run_dir"] in run_dirs and r["status"] != "ok" and r["test_solver"] is not None and is_finer(r)
    )
    steps = next((r["train_steps"] for r in rows), None)
    train_mean = _mean(train.values())
    chance = len(rows_at_chance(rows)[0])
    bases = [float(b) for r in rows if r["is_train_solver"] and (b := r.get("baseline_accuracy")) is not None]
    baseline = _mean(bases) if bases else None
    if not finer:
        return StepCheck(train_solver, steps, h, train_mean, None, None, None, len(train), len(train), failed, True,
                         chance, len(train), baseline)
    gaps = {key: _mean(acc - train[s] for s, acc in per_seed.items()) for key, per_seed in finer.items()}
    worst = max(gaps, key=lambda k: (abs(gaps[k]), sort_key(k)))
    seeds = sorted({s for per_seed in finer.values() for s in per_seed}, key=sort_value)
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
        worst_solver=eval_label(worst),
        worst_accuracy=_mean(finer[worst].values()),
        gap=gaps[worst],
        seeds=len(seeds),
        seeds_within=seeds_within,
        failed=failed,
        within=abs(gaps[worst]) <= tolerance + 1e-12,
        at_chance=chance,
        runs=len(train),
        baseline=baseline,
    )


def _finer_cell(c: StepCheck) -> str:
    """The finer solver's accuracy, marked when it is at chance."""
    if c.worst_accuracy is None:
        return "–"
    return mark_cell(f"{c.worst_accuracy:.4f}", value_at_chance([c.worst_accuracy], [c.baseline]))


def _h_text(h: float | None, steps: int | None = None) -> str:
    if h is None:
        return "none"
    return f"h = {fmt_h(h)}" + (f" (N = {steps})" if steps else "")


def critical_step_markdown(results: Sequence[CriticalStepSize]) -> Section:
    """Markdown: the per-step-size table and the critical step size of each training solver (its headlines: the
    critical step sizes, or that they are withheld because some of the models are at chance)."""
    if not results:
        return Section()
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
    headlines = []
    for res in results:
        title = f"trained with {res.train_solver}" + (f", {res.setting}" if res.setting else "")
        body = []
        for c in res.checks:
            chance = f" {MARK}" + (f" {c.at_chance}/{c.runs}" if c.at_chance != c.runs else "") if c.at_chance else ""
            passes = "withheld" if c.at_chance else "yes" if c.within else "**no**"
            body.append(
                [
                    fmt_h(c.step_size),
                    fmt(c.train_steps),
                    f"{c.train_accuracy:.4f}{chance}",
                    c.worst_solver or "–",
                    _finer_cell(c),
                    f"{100 * c.gap:+.1f}" if c.gap is not None else "–",
                    f"{c.seeds_within}/{c.seeds}",
                    passes + (f" ({c.failed} failed)" if c.failed else ""),
                ]
            )
        lines += [f"### {title.capitalize()}", ""]
        lines += md_table(
            ["h", "N", "training acc.", "farthest finer solver", "its acc.", "gap (points)", "seeds within", "passes"],
            body,
        )
        if res.withheld is not None:
            text = withheld_line(f"Critical step size ({title})", res.withheld)
            lines += [text, ""]
            headlines.append(text)
            continue
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
            text += f" (The largest passing h is {fmt_h(literal)}, but a smaller h fails.)"
        lines += [text, ""]
        headlines.append(text)
    return Section(lines, headlines)


@register_section("critical step size")
def critical_step_section(ctx: ReportContext) -> list[str] | None:
    """Report section: :func:`critical_step_markdown` of the rows (None when no solver has two step sizes)."""
    return critical_step_markdown(critical_step_sizes(ctx.rows)) or None


# ----------------------------------------------------------------------------------------------
# Accuracy per step factor


def _cell(rows: list[Row]) -> str:
    """Mean ± std accuracy of ``rows`` (3 decimals), marked when at chance."""
    return mark_cell(fmt_stats(stats(r["accuracy"] for r in rows), 3), cell_at_chance(rows))


def step_factor_table(rows: Sequence[Row], factors: Sequence[float] = STEP_FACTORS) -> list[str]:
    """Markdown tables, one per fixed-step test solver: training model x step factor, mean ± std accuracy.

    A row is one trained model (:func:`~odenet.reports.stats.model_key`: training solver, ``N``, ``h`` and any
    further swept setting, labelled as in "Accuracy at the training step size"); a cell holds its evaluations with
    ``test_steps == max(1, round(N / factor))`` (as ``conf/evaluation/step_factors.yaml`` makes them); the test
    steps are given in brackets. Empty when no solver has two matching cells.
    """
    fixed = [
        r
        for r in rows
        if r["status"] == "ok" and r["accuracy"] is not None and r["test_steps"] is not None and r["train_steps"]
    ]
    settings = setting_keys(fixed)
    models = group(fixed, lambda r: model_key(r, settings))
    solvers = sorted({r["test_solver"] for r in fixed}, key=lambda s: (solver_order(s) or 99, s))
    lines: list[str] = []
    for solver in solvers:
        body = []
        for key in sorted(models, key=sort_key):
            mine, n = models[key], int(key[1])
            cells = []
            for f in factors:
                steps = max(1, round(n / f))
                vals = [r for r in mine if r["test_solver"] == solver and r["test_steps"] == steps]
                cells.append(f"{_cell(vals)} ({steps})" if vals else "–")
            if any(c != "–" for c in cells):
                body.append([model_label(key, settings) + label_mark_rows(mine), *cells])
        filled = {i for row in body for i, c in enumerate(row[1:]) if c != "–"}
        if len(filled) < 2:  # one factor only (each model at its own training step): nothing to compare
            continue
        header = ["trained model", *(f"{f:g} h" for f in factors)]
        lines += [f"### Tested with {solver}", ""] + md_table(header, body)
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
        if r["status"] == "ok" and r["accuracy"] is not None and adaptive_train(r) and r["test_steps"] is not None
    ]
    lines: list[str] = []
    for train_solver in sorted({r["train_solver"] for r in adaptive}, key=str):
        mine = [r for r in adaptive if r["train_solver"] == train_solver]
        steps = sorted({int(r["test_steps"]) for r in mine})
        solvers = sorted({r["test_solver"] for r in mine}, key=lambda s: (solver_order(s) or 99, s))
        body = [
            [solver, *(_cell([r for r in mine if r["test_solver"] == solver and r["test_steps"] == n])
                       for n in steps)]
            for solver in solvers
        ]  # fmt: skip
        lines += [f"### Trained with {train_solver} (adaptive){label_mark_rows(mine)}", ""]
        lines += md_table(["test solver", *(f"N={n} (h={fmt_h(1 / n)})" for n in steps)], body)
    if not lines:
        return []
    intro = "Accuracy (mean ± sample std over seeds) of adaptively trained models re-integrated with N fixed steps."
    return ["## Adaptively trained models on a fixed grid", "", intro, "", *lines]


@register_section("step factors")
def step_factor_section(ctx: ReportContext) -> list[str] | None:
    """Report section: :func:`step_factor_table` and :func:`fixed_grid_table` (None when both are empty)."""
    return step_factor_table(ctx.rows) + fixed_grid_table(ctx.rows) or None


# ----------------------------------------------------------------------------------------------
# The grid search under several protocols (e.g. ours and Ott et al.'s published one), side by side


def protocol_comparison(protocols: dict[str, Any], reference: str = "dopri5") -> list[str]:
    """Markdown: per Euler training ``N`` (rows) and protocol (column groups), the accuracy under the training solver
    and under ``reference`` (the field's ODE solution; %, mean ± std over seeds) and their paired difference
    (points), all three over the seeds that have both accuracies; ``h`` is the recorded ``train_step_size``.
    ``protocols`` maps a name to a fixed-step sweep's folder or ``summary.csv``
    (:func:`odenet.reports.step_adaptation.load_grid`)."""
    from .step_adaptation import _f, _pct, grid_h, load_grid

    grids = {name: load_grid(path) for name, path in protocols.items()}
    ns = sorted({n for g in grids.values() for n in g if isinstance(n, int)})
    header = ["h (N)"]
    for name in grids:
        header += [f"{name}: training solver", f"{name}: {reference}", f"{name}: change (points)"]
    body = []
    for n in ns:
        cells = [f"{_h_text(grid_h(n, *(g.get(n, {}) for g in grids.values())))} ({n})"]
        for g in grids.values():
            cell = g.get(n, {})
            train, ref = cell.get("train", {}), cell.get(reference, {})
            both = [s for s in train if s in ref]  # the seeds with both accuracies: the same set for all three
            paired = [100 * (ref[s] - train[s]) for s in both]
            cells += [_pct(stats(train[s] for s in both)), _pct(stats(ref[s] for s in both)), _f(stats(paired))]
        body.append(cells)
    return md_table(header, body)

