"""``python -m odenet.report DIR [--out OUT]``: write ``summary.csv``, ``report.md`` and the plots of a sweep.

The command line of :mod:`odenet.reports`; ``odenet.report.ReportCallback`` is kept as the Hydra callback's
historical target.
"""

from __future__ import annotations

import sys

from .reports import ReportCallback, main

__all__ = ["ReportCallback", "main"]

if __name__ == "__main__":
    sys.exit(main())
