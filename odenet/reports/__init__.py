"""Reports: the only layer that imports matplotlib.

Shared pieces (collecting rows from run folders, statistics, markdown, figures) and one module per
experiment, named after it, each registering its sections and plots when imported here.
"""

from . import convergence_test, core, dynamics, learned_steps, smoothness, step_adaptation, step_size_ablation  # noqa: F401
from .core import ReportCallback, ReportError, collect, main, write_report

__all__ = ["ReportCallback", "ReportError", "collect", "core", "main", "write_report"]
