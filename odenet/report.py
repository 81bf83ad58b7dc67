"""``python -m odenet.report DIR [--out OUT] [--grid GRID]``: write ``summary.csv``, ``report.md`` and the plots
of a sweep.

The command line of :mod:`odenet.reports`; ``odenet.report.ReportCallback`` stays importable (the Hydra
callback's target is ``odenet.reports.ReportCallback``).
"""

from __future__ import annotations

import sys

from .reports import ReportCallback, main

__all__ = ["ReportCallback", "main"]

if __name__ == "__main__":
    sys.exit(main())
