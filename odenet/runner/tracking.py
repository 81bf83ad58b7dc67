"""Experiment trackers (config key ``logger``): TensorBoard, as the optional ``track`` extra.

A tracker receives every ``history.csv`` row (scalars per log step) and the step sizes of the block (learned
``h_k`` or an adaptive solver's accepted steps, as histograms), in ``RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

EXTRA = 'pip install -e ".[track]" (or pip install tensorboard)'


def check_logger(name: str) -> None:
    """A ConfigError when the chosen tracker's package is missing."""
    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"logger=tensorboard needs the tensorboard package: {EXTRA}")


class TensorBoardTracker:
    """Writes scalars and step-size histograms with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, folder: Path, start: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=start or None)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["iteration"])
        for key, value in row.items():
            if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value) and not key.startswith("h_"):
                self.writer.add_scalar(f"train/{key}", value, step)
        learned = [float(v) for k, v in row.items() if k.startswith("h_")]
        if learned:
            self.writer.add_histogram("step_sizes/learned", torch.tensor(learned), step)
        accepted = row.get("step_sizes")
        if isinstance(accepted, str) and accepted:
            self.writer.add_histogram("step_sizes/accepted", torch.tensor([float(h) for h in accepted.split()]), step)

    def close(self) -> None:
        self.writer.close()


def make_tracker(name: str, run_path: Path, start: int = 0) -> TensorBoardTracker | None:
    """The tracker of ``logger=name`` writing under ``run_path`` (None for ``none``)."""
    if name == "tensorboard":
        return TensorBoardTracker(run_path / "tensorboard", start)
    return None
