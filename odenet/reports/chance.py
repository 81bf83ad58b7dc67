"""Models at chance, smoke runs, and the conclusions a report withholds from them.

A classifier is *at chance* when its test accuracy under its training solver does not beat the majority-class
baseline by more than :data:`~odenet.reports.collect.CHANCE_MARGIN` (:func:`~odenet.reports.collect.beats_baseline`;
regression runs have no baseline and are never at chance). Its numbers may stay in a table, marked with
:data:`MARK`; a conclusion resting on it — a verdict, a fitted trend, a critical step size — is replaced by
:func:`withheld_line`. Every experiment section decides what its conclusion rests on and calls :func:`withhold`.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .collect import CHANCE_MARGIN, ReportContext, Row
from .registry import Section

#: Marks a number (a cell, a model label) at chance.
MARK = "†"
LEGEND = (
    f"{MARK} at chance: accuracy not above the majority-class baseline (always predicting the most frequent "
    f"training class) by more than {100 * CHANCE_MARGIN:g} point; after a model label: k/n of its runs at chance "
    "under their training solver. Conclusions resting on such models are withheld."
)
SMOKE_BANNER = "**Smoke runs: the numbers check the machinery and mean nothing.**"


@dataclass(frozen=True)
class Withheld:
    """``at_chance`` of the ``total`` models (runs) a conclusion rests on did not beat their baseline."""

    at_chance: int
    total: int

    def text(self, what: str = "") -> str:
        """``what — withheld: 2 of 6 models did not beat the majority-class baseline.``"""
        prefix = f"{what} — " if what else ""
        return f"{prefix}withheld: {self.at_chance} of {self.total} models did not beat the majority-class baseline."


def withhold(ctx: ReportContext, run_dirs: Iterable[str]) -> Withheld | None:
    """A :class:`Withheld` when some of the runs ``run_dirs`` a conclusion rests on are at chance, else None."""
    dirs = list(dict.fromkeys(run_dirs))
    chance = ctx.at_chance(dirs)
    return Withheld(len(chance), len(dirs)) if chance else None


def rows_at_chance(rows: Iterable[Row]) -> tuple[list[str], list[str]]:
    """``(run dirs at chance, all run dirs)`` of ``rows`` (each once), from their ``beats_baseline`` column."""
    verdict: dict[str, bool | None] = {}
    for r in rows:
        verdict.setdefault(r["run_dir"], r.get("beats_baseline"))
    return [d for d, v in verdict.items() if v is False], list(verdict)


def withhold_rows(rows: Iterable[Row]) -> Withheld | None:
    """:func:`withhold` for the runs of summary ``rows``."""
    chance, dirs = rows_at_chance(rows)
    return Withheld(len(chance), len(dirs)) if chance else None


def withheld_line(what: str, withheld: Withheld) -> str:
    """The line that replaces a conclusion: ``**what** — withheld: N of M models did not beat ...``."""
    return withheld.text(f"**{what}**")


def withheld_section(ctx: ReportContext, lines: list[str], what: str, run_dirs: Iterable[str]) -> list[str] | Section:
    """A section's ``lines`` as they are when none of the runs ``run_dirs`` its conclusion rests on is at chance;
    else those lines, then :func:`withheld_line` ``what``, which also becomes the section's headline."""
    withheld = withhold(ctx, run_dirs)
    if withheld is None:
        return lines
    text = withheld_line(what, withheld)
    return Section([*lines, text, ""], [text])


def _mark(n: int, total: int) -> str:
    if not n:
        return ""
    return f" {MARK}" if n == total else f" {MARK} {n}/{total}"


def label_mark(ctx: ReportContext, run_dirs: Iterable[str]) -> str:
    """`` †`` (all runs at chance) or `` † 1/3`` (some), after a model label; ``""`` when none is."""
    dirs = list(dict.fromkeys(run_dirs))
    return _mark(len(ctx.at_chance(dirs)), len(dirs))


def label_mark_rows(rows: Iterable[Row]) -> str:
    """:func:`label_mark` for the runs of summary ``rows``."""
    chance, dirs = rows_at_chance(rows)
    return _mark(len(chance), len(dirs))


def cell_at_chance(rows: Sequence[Row]) -> bool:
    """The mean accuracy of ``rows`` (ok, with a baseline) is not above their mean baseline + the margin."""
    pairs = [(r["accuracy"], r.get("baseline_accuracy")) for r in rows if r["status"] == "ok"]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return False
    return statistics.fmean(a for a, _ in pairs) <= statistics.fmean(b for _, b in pairs) + CHANCE_MARGIN


def value_at_chance(accuracies: Iterable[float | None], baselines: Iterable[float | None]) -> bool:
    """Like :func:`cell_at_chance` for plain lists: mean accuracy not above mean baseline + the margin."""
    accs = [float(a) for a in accuracies if a is not None]
    bases = [float(b) for b in baselines if b is not None]
    if not accs or not bases:
        return False
    return statistics.fmean(accs) <= statistics.fmean(bases) + CHANCE_MARGIN


def mark_cell(text: str, at_chance: bool) -> str:
    """``text`` followed by :data:`MARK` when ``at_chance`` (and ``text`` is a number, not ``–``)."""
    return f"{text} {MARK}" if at_chance and text not in ("", "–") else text


def baseline_of(ctx: ReportContext, run_dir: str) -> float | None:
    """The run's majority-class baseline accuracy (None: regression, or not recorded)."""
    value = (ctx.run(run_dir).metrics or {}).get("baseline_accuracy")
    return None if value is None else float(value)
