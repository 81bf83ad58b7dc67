"""``python -m odenet.report DIR [--out OUT] [--grid GRID]`` and the Hydra callback that runs it after a sweep."""

from __future__ import annotations

import argparse
import atexit
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..runner.accel import apply_threads
from ..runner.ranges import THREADS_AUTO
from .collect import ReportError
from .write import write_report

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """Hydra callback: write the report into the sweep dir when a multirun ends.

    Enable with ``hydra.callbacks.report._target_=odenet.reports.ReportCallback``. A sweep that produced nothing
    is logged and ends normally; a report that could not be written (a full disk, a read-only folder) makes the
    sweep command fail, the files already there left as they were.

    A job that raised ends the multirun with an error before Hydra calls ``on_multirun_end``: the report is then
    written when the process exits (the sweep command still fails), marking the failed job — its ``metrics.json``
    says failed, or its folder has none.
    """

    def __init__(self, plots: str = "auto") -> None:
        """``plots``: auto (draw the figures unless every run is a smoke run), always or never
        (``hydra.callbacks.report.plots=always``)."""
        if plots not in ("auto", "always", "never"):
            raise ValueError(f"hydra.callbacks.report.plots must be auto, always or never, got {plots!r}")
        self.plots: bool | None = {"auto": None, "always": True, "never": False}[plots]
        self._pending: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = config
        atexit.register(self._after_failed_sweep)

    def _after_failed_sweep(self) -> None:
        """At exit, when the multirun never reached its end (a job raised): write the report all the same."""
        config, self._pending = self._pending, None
        if config is None:
            return
        log.warning("report: the sweep ended with an error (a job raised); reporting the jobs as they are")
        try:
            self._write(config)
        except SystemExit:  # the command fails anyway; the error is logged
            pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._pending = None
        atexit.unregister(self._after_failed_sweep)
        self._write(config)

    def _write(self, config: DictConfig) -> None:
        apply_threads(config.get("threads", THREADS_AUTO))  # the sweep's threads setting, in this process too
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as err:
            log.warning("report: cannot resolve hydra.sweep.dir (%s); no report written", err)
            return
        try:
            paths = write_report(sweep_dir, plots=self.plots)
        except ReportError as err:
            log.warning("report: %s; no report written", err)
            return
        except OSError as err:
            log.error("report: could not write the report into %s: %s", sweep_dir, err)
            raise SystemExit(1) from None
        except Exception:
            log.exception("report: writing the report for %s failed", sweep_dir)
            return
        log.info("report: wrote %s", ", ".join(str(p) for p in paths))
        if config.get("logger") == "tensorboard":
            log_figures(sweep_dir / "tensorboard", [p for p in paths if p.suffix == ".png"])


def log_figures(folder: Path, pngs: Sequence[Path]) -> None:
    """The report's figures as images in TensorBoard (``logger=tensorboard``), next to the runs' scalars."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for png in pngs:
            image = np.asarray(Image.open(png).convert("RGB"))
            writer.add_image(f"report/{png.stem}", image, dataformats="HWC")
    finally:
        writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m odenet.report DIR [--out OUT] [--grid GRID]``: write the report and print the paths written."""
    parser = argparse.ArgumentParser(
        prog="python -m odenet.report",
        description="Collect every metrics.json under DIR into summary.csv, report.md and PNG plots.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run or sweep (multirun) directory")
    parser.add_argument("--out", metavar="OUT", default=None, help="where to write (default: DIR)")
    parser.add_argument(
        "--grid",
        metavar="GRID",
        default=None,
        help="a fixed-step sweep to compare step-size adaptation with: its summary.csv, or the folder holding it",
    )
    parser.add_argument("--plots", action="store_true",
                        help="draw the figures even when every run is a smoke run (skipped by default there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    apply_threads(THREADS_AUTO)
    try:
        paths = write_report(args.dir, args.out, grid=args.grid, plots=True if args.plots else None)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the files already there are left as they were
        print(f"error: could not write the report into {args.out or args.dir}: {err}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0
