"""Writing a report: ``summary.csv``, ``report.md`` and every registered plot that has data."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..runner.io import atomic_write
from ..runner.io import write_csv as atomic_csv
from . import registry
from .collect import METRICS, REPORT, SUMMARY, ReportContext, ReportError, Row, columns
from .figures import save_figure
from .markdown import render_markdown

log = logging.getLogger(__name__)


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """Write ``rows`` atomically in the report's column order (``None`` as an empty field)."""
    return atomic_csv(Path(path), rows, columns(rows))


def write_report(dir: str | Path, out_dir: str | Path | None = None, grid: str | Path | None = None,
                 plots: bool | None = None) -> list[Path]:
    """Write ``summary.csv``, ``report.md`` and the registered plots for the runs under ``dir``.

    Files go to ``out_dir`` (default: ``dir``). ``grid``: a fixed-step sweep to compare with (its
    ``summary.csv`` or the folder holding it; the step-size adaptation section uses it). Plots whose data is
    absent are skipped (and a stale file of that name removed). Returns the paths written: CSV, markdown, then
    PNGs. Raises :class:`ReportError` if ``dir`` is missing or holds no readable ``metrics.json``.

    ``plots``: draw the figures (None: unless every run is a smoke run, whose numbers mean nothing — drawing
    would cost most of a smoke sweep's time).
    """
    ctx = ReportContext.load(dir, grid=grid)
    if not ctx.rows:
        raise ReportError(f"no readable {METRICS} under {ctx.root}")
    out = Path(out_dir) if out_dir is not None else ctx.root
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(ctx.rows, out / SUMMARY)
    if plots is None:
        plots = not all(ctx.smoke(d) for d, _ in ctx.run_dirs())
    pngs = []
    for name, fn in registry.PLOTS.items():
        path = out / name
        fig = registry.guarded(f"plot {name}", fn, ctx) if plots else None
        if fig is None:
            if path.exists():
                path.unlink()
                log.info("removed stale %s (no data for it now)", path)
            continue
        pngs.append(save_figure(fig, path))
    md_path = out / REPORT
    text = render_markdown(ctx, [csv_path, *pngs], out, registry.sections(ctx))
    if not plots:
        text += (f"\nFigures not drawn (smoke runs): `python -m odenet.report {ctx.root.resolve()} --plots` "
                 "draws them.\n")
    atomic_write(md_path, lambda f: f.write(text))
    return [csv_path, md_path, *pngs]
