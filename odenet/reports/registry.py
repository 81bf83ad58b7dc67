"""What a report holds beyond the shared tables: registered markdown sections and plots.

Each is a function of one :class:`~odenet.reports.collect.ReportContext` (the rows, the sweep folder, its run
folders and the report's options) returning the section's markdown lines or a figure, or ``None`` when the data
do not fit it (no 2-D inputs, one step size only, no adapted runs, ...). One that raises is logged and skipped,
never stopping the report. Experiment modules register theirs when imported (``odenet.reports`` imports them
all); sections appear after the table of accuracy at the training step size, and plots after the built-in ones,
in the order they were registered. A section may return a :class:`Section`: its lines with the one-line
*headlines* (its conclusion, or that the conclusion is withheld) that the report's summary lists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from matplotlib.figure import Figure

from .collect import ReportContext

log = logging.getLogger(__name__)


class Section(list[str]):
    """A section's markdown lines, with ``headlines``: one line each for the report's summary."""

    def __init__(self, lines: Iterable[str] = (), headlines: Iterable[str] = ()) -> None:
        super().__init__(lines)
        self.headlines = list(headlines)


SectionFn = Callable[[ReportContext], list[str] | None]
PlotFn = Callable[[ReportContext], Figure | None]

#: Section name -> function; plot file name -> function.
SECTIONS: dict[str, SectionFn] = {}
PLOTS: dict[str, PlotFn] = {}


def _register(registry: dict[str, Any], name: str) -> Callable[[Any], Any]:
    """A decorator that stores its function in ``registry`` under ``name``."""

    def deco(fn: Any) -> Any:
        registry[name] = fn
        return fn

    return deco


def register_section(name: str) -> Callable[[SectionFn], SectionFn]:
    """Decorator adding a markdown section to every report: ``fn(ctx) -> lines | None`` (None: skip)."""
    return _register(SECTIONS, name)


def register_plot(filename: str) -> Callable[[PlotFn], PlotFn]:
    """Decorator adding a plot to every report: ``fn(ctx) -> Figure | None`` (None: no data, skip)."""
    return _register(PLOTS, filename)


def register_dir_plot(filename: str) -> Callable[[PlotFn], PlotFn]:
    """The same as :func:`register_plot` (every plot gets the run folders through its context); kept by name."""
    return register_plot(filename)


def guarded(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or None (logged with the traceback) if it raises."""
    try:
        return fn(*args)
    except Exception:
        log.exception("report: %s failed; skipped", what)
        return None


def sections(ctx: ReportContext) -> list[Section]:
    """Every registered section that applies to ``ctx`` (in registration order), as :class:`Section`."""
    out = []
    for name, fn in SECTIONS.items():
        lines = guarded(f"section {name!r}", fn, ctx)
        if lines:
            out.append(Section(lines, getattr(lines, "headlines", ())))
    return out
