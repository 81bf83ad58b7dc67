"""The Hydra entry point: ``python -m odenet.run +experiment=NAME [overrides]`` (the console script ``odenet``).

Trains and evaluates one model per job into Hydra's output dir; a multirun (``-m``) sweeps, and
``odenet.reports.ReportCallback`` writes ``summary.csv``, ``report.md`` and plots at its end. A config error is
one line and exit status 2, found by :func:`odenet.runner.config.precheck` before a job starts.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .runner.config import CONFIG_PATH, experiment_dir, precheck, register_configs, shadowed_data_choice

log = logging.getLogger("odenet")

register_configs()


def _task_overrides() -> dict[str, str]:
    overrides = {}
    for item in HydraConfig.get().overrides.task:
        key, _, value = item.partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def _train_ensemble(cfg: DictConfig, out_dir: Path) -> dict:
    """``trainer.ensemble=K``: member i in the folder the sweep gives the job ``seed=seed+i`` (see
    :func:`odenet.runner.ensemble.member_runs`); returns member 0's metrics."""
    from .runner.ensemble import SweepNaming, member_runs, train_ensemble

    hc = HydraConfig.get()
    naming = None
    if hc.mode == RunMode.MULTIRUN:
        od = hc.job.config.override_dirname
        naming = SweepNaming(Path(hc.runtime.cwd) / hc.sweep.dir, list(od.exclude_keys), od.item_sep, od.kv_sep)
    runs = member_runs(cfg, out_dir, list(hc.overrides.task), naming)  # type: ignore[arg-type]
    return train_ensemble(cfg, runs)[0]  # type: ignore[arg-type,return-value]


HYDRA_RECORD = ".hydra"


def _write_hydra_record(cfg: DictConfig, out_dir: Path) -> None:
    """Hydra's record of the job (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``), written here rather
    than by Hydra (``hydra.output_subdir: null``) so that a start refused on a finished run leaves its record as it
    was; each file atomically."""
    from .runner.io import atomic_write

    hc = HydraConfig.get()
    folder = out_dir / HYDRA_RECORD
    for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hc})),
                       ("overrides.yaml", OmegaConf.create(list(hc.overrides.task)))):
        text = OmegaConf.to_yaml(node)
        atomic_write(folder / name, lambda f, text=text: f.write(text))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> float | list[float] | None:
    from .blocks import SolverError  # torch is imported only once the config has composed
    from .runner.rundir import RunDir
    from .runner.train import TrainingDiverged, objective, train_and_evaluate
    from .runner.validate import ConfigError

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    holds_run = RunDir(out_dir).holds_run()
    if not holds_run:  # a fresh folder: the record at once, so a job that fails to start is still found by reports
        _write_hydra_record(cfg, out_dir)
    try:
        shadowed = shadowed_data_choice(list(hc.overrides.task), cfg)  # type: ignore[arg-type]
        if shadowed:  # a sweep's own task group, composed after data=X, chose other data
            raise ConfigError(shadowed)
        if cfg.trainer.ensemble > 1:  # K seeds in one process, each written where its own job would write
            metrics = _train_ensemble(cfg, out_dir)
        else:
            metrics = train_and_evaluate(cfg, out_dir, _task_overrides())  # type: ignore[arg-type]
    except (ConfigError, ValueError, OSError) as err:  # bad config, data or output folder: nothing was written
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        if hc.mode == RunMode.RUN:
            raise SystemExit(2) from None
        return None
    except (TrainingDiverged, SolverError) as err:
        if holds_run:
            _write_hydra_record(cfg, out_dir)
        log.error("run failed (%s): %s", out_dir, err)
        if hc.mode == RunMode.RUN:
            raise SystemExit(1) from None
        return None  # a sweep goes on with its other jobs
    if holds_run:  # the start was accepted (same config): the record of this invocation replaces the last one
        _write_hydra_record(cfg, out_dir)
    for ev in metrics["evaluations"]:
        steps = f"{ev['test_steps']} steps" if ev["test_steps"] else f"rtol {ev['rtol']}"
        if ev["status"] == "ok":
            acc = "   –  " if ev["accuracy"] is None else f"{ev['accuracy']:.4f}"
            log.info("test %-8s %-10s accuracy %s  loss %.4f  nfe %.1f", ev["test_solver"], steps,
                     acc, ev["loss"], ev["nfe"])
        else:
            log.info("test %-8s %-10s failed: %s", ev["test_solver"], steps, ev["reason"])
    log.info("wrote %s", out_dir)
    return objective(cfg, metrics)  # type: ignore[arg-type]


def experiments() -> dict[str, str]:
    """Every ``conf/experiment/NAME.yaml`` and the first line of its description."""
    out = {}
    for path in sorted(Path(experiment_dir()).glob("*.yaml")):
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        lines = [ln for ln in lines if ln and not ln.startswith("@package")]
        text = (lines[0] if lines else "").rstrip(":")
        out[path.stem] = text if len(text) <= 90 else text[:88].rsplit(" ", 1)[0] + " …"
    return out


HELP = """usage: odenet [+experiment=NAME] [group=option ...] [key=value ...] [-m]   (same as python -m odenet.run)

Train and evaluate one model (or, with -m or an experiment that sweeps, one per job) into a run folder.

experiments (+experiment=NAME; add +debug=smoke to run any of them in seconds):
{experiments}

examples:
  odenet                                          one run: digits, MLP field, 8 Euler steps
  odenet +experiment=step_size_ablation           a recorded experiment (a sweep)
  odenet -m solver.steps=4,16 seed=0,1,2          any sweep
  odenet block=ode solver=dopri5 --cfg job        print the composed config, run nothing
  python -m odenet.report DIR                     summary.csv, report.md and plots of a run or sweep

Config groups, keys and Hydra's own flags: odenet --hydra-help; shell completion: eval "$(odenet -sc install=bash)".
"""


def cli() -> None:
    """``python -m odenet.run`` / ``odenet``: a config error is one line and exit status 2, before torch loads."""
    if sys.argv[1:] in (["--help"], ["-h"]):
        width = max(map(len, experiments()), default=0)
        listing = "\n".join(f"  {name:<{width}}  {text}" for name, text in experiments().items())
        print(HELP.format(experiments=listing))
        return
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        error = precheck(sys.argv[1:])
        if error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2)
    main()


if __name__ == "__main__":
    cli()
