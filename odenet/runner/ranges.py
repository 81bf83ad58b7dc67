"""The allowed range of every numeric setting: checked on the composed config, before torch is imported."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """An allowed numeric range; ``integer`` also refuses fractions, ``optional`` allows null."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low < value (else low <= value)
    high_open: bool = False
    integer: bool = False
    optional: bool = False
    hint: str = ""  # appended to the error message

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        kind = "an integer" if self.integer else "a number"
        text = f"{kind} {' and '.join(parts)}".strip() + (" (or null)" if self.optional else "")
        return text + (f", {self.hint}" if self.hint else "")

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


LOGGERS = ("none", "tensorboard")
OBJECTIVES = ("test_accuracy", "validation_accuracy", "validation_loss", "test_loss", "train_loss", "nfe")

POSITIVE = Range(0, low_open=True)
COUNT = Range(1, integer=True)
NONNEG = Range(0)

#: ``threads=auto``: one intra-op thread (``odenet.runner.accel.resolve_threads``).
THREADS_AUTO = "auto"

#: Every numeric setting and its allowed range.
RANGES: dict[str, Range] = {
    "threads": Range(1, integer=True, optional=True, hint="or auto (one thread)"),
    "data.n_train": Range(1, integer=True, optional=True),
    "data.n_test": Range(1, integer=True, optional=True),
    "data.seed": Range(0, integer=True),
    "data.dim": COUNT,
    "data.noise": Range(0, optional=True),
    "data.crop_padding": Range(0, integer=True),
    "data.validation": Range(0, 0.9),
    "field.hidden": COUNT,
    "field.depth": COUNT,
    "field.kernel": COUNT,
    "field.groups": COUNT,
    "model.width": Range(1, integer=True, optional=True),
    "model.augment_dim": Range(0, integer=True),
    "block.T": POSITIVE,
    "solver.steps": Range(1, integer=True, optional=True),
    "solver.rtol": POSITIVE,
    "solver.atol": POSITIVE,
    "solver.max_steps": COUNT,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NONNEG,
    "optimizer.momentum": Range(0, 1, high_open=True),
    "optimizer.step_lr_scale": POSITIVE,
    "optimizer.gamma": Range(0, 1, low_open=True),
    "trainer.iterations": Range(1, integer=True, optional=True),
    "trainer.epochs": Range(1, integer=True, optional=True),
    "trainer.batch_size": COUNT,
    "trainer.log_every": COUNT,
    "trainer.checkpoint_every": COUNT,
    "trainer.eval_batch_size": COUNT,
    "trainer.ensemble": COUNT,
    "adaptation.every": COUNT,
    "adaptation.threshold": Range(0, 1, hint="a fraction of the batch (0.1 = 10 points)"),
    "adaptation.accuracy_factor": Range(0, low_open=True, optional=True),
    "adaptation.decrease": Range(0, 1, low_open=True, high_open=True),
    "adaptation.increase": Range(1, low_open=True),
    "adaptation.initial_step_size": Range(0, low_open=True, optional=True),
    "adaptation.max_step_size": Range(0, low_open=True, optional=True),
    "adaptation.min_step_size": Range(0, low_open=True, optional=True),
    "regularization.kinetic": NONNEG,
    "regularization.jacobian": NONNEG,
    "growth.at": Range(0, 1, low_open=True, high_open=True, hint="a fraction of the training iterations"),
    "growth.insert": COUNT,
    "growth.factor": Range(2, integer=True),
    "analysis.gradient_times": COUNT,
    "analysis.grid": Range(2, integer=True),
    "analysis.span": POSITIVE,
    "analysis.hessian_iters": COUNT,
    "analysis.hessian_tol": POSITIVE,
    "analysis.trace_samples": Range(2, integer=True),
    "analysis.adaptive_rtol": POSITIVE,
    "analysis.adaptive_atol": POSITIVE,
    "analysis.shattering_lines": COUNT,
    "analysis.shattering_points": Range(4, integer=True),
    "analysis.lesion_draws": COUNT,
    "analysis.points": COUNT,
}
EVAL_RANGES: dict[str, Range] = {
    "steps": Range(1, integer=True, optional=True),
    "step_factor": Range(0, low_open=True, optional=True),
    "rtol": Range(0, low_open=True, optional=True),
    "atol": Range(0, low_open=True, optional=True),
}


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_range(key: str, value: Any, rule: Range) -> None:
    if not rule.ok(value):
        raise ConfigError(f"{key} must be {rule.describe()}, got {value!r}")


def check_ranges(cfg: Any) -> None:
    """Every numeric setting of ``cfg`` within its range (a ConfigError naming the key otherwise)."""
    for key, rule in RANGES.items():
        value = _get(cfg, key)
        if not (key == "threads" and value == THREADS_AUTO):
            check_range(key, value, rule)
    for i, m in enumerate(cfg.optimizer.milestones):
        check_range(f"optimizer.milestones[{i}]", m, Range(0, 1, low_open=True, high_open=True))
    for i, ev in enumerate(cfg.evaluation.solvers):
        for key, rule in EVAL_RANGES.items():
            check_range(f"evaluation.solvers[{i}].{key}", getattr(ev, key), rule)
