"""Every check of a run's config, in one place, run once before anything is written.

:func:`validate` raises :class:`ConfigError` (a ``ValueError``) whose message names the config key and the fix.
Names are checked against the registries (:mod:`odenet.runner.build`, :mod:`odenet.data`), numbers against the
ranges in :data:`RANGES`, and the combinations that cannot work together are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from ..models import AMP_DTYPES, IMAGE_STEMS
from ..regularization import NOISES
from ..solvers import ADAPTIVE_SOLVERS, SCHEMES, TORCHDIFFEQ_FIXED, all_solver_names, is_adaptive
from .build import BLOCKS, FIELDS, HEADS, OPTIMIZERS, SCHEDULES, regularizers
from .config import Config, unknown_keys
from .errors import ConfigError, check_choice
from .tracking import check_logger

__all__ = ["ConfigError", "RANGES", "Range", "check_choice", "validate"]


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

#: Every numeric setting and its allowed range.
RANGES: dict[str, Range] = {
    "threads": Range(1, integer=True, optional=True),
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
    "analysis.gradient_times": COUNT,
    "analysis.grid": Range(2, integer=True),
    "analysis.span": POSITIVE,
    "analysis.hessian_iters": COUNT,
    "analysis.hessian_tol": POSITIVE,
    "analysis.trace_samples": Range(2, integer=True),
    "analysis.adaptive_rtol": POSITIVE,
    "analysis.adaptive_atol": POSITIVE,
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


def validate(cfg: Config) -> None:
    """Every name, number and combination in ``cfg`` (a ConfigError naming the key otherwise)."""
    from ..data import DATASETS
    from .accel import AUGMENTATIONS

    if isinstance(cfg, DictConfig):
        extra = unknown_keys(cfg)
        if extra:
            raise ConfigError(f"unknown config key {extra[0]}: not in the schema (odenet.runner.config.Config); "
                              "check its spelling (python -m odenet.run --cfg job shows every key)")

    for key, rule in RANGES.items():
        check_range(key, _get(cfg, key), rule)
    check_choice("data.name", cfg.data.name, list(DATASETS))
    check_choice("data.augment", cfg.data.augment, AUGMENTATIONS)
    check_choice("field.kind", cfg.field.kind, list(FIELDS))
    check_choice("block.kind", cfg.block.kind, list(BLOCKS))
    check_choice("model.head", cfg.model.head, HEADS)
    check_choice("model.stem", cfg.model.stem, IMAGE_STEMS)
    check_choice("solver.name", cfg.solver.name, all_solver_names())
    check_choice("optimizer.name", cfg.optimizer.name, list(OPTIMIZERS))
    check_choice("optimizer.schedule", cfg.optimizer.schedule, list(SCHEDULES))
    check_choice("trainer.amp_dtype", cfg.trainer.amp_dtype, list(AMP_DTYPES))
    check_choice("regularization.noise", cfg.regularization.noise, NOISES)
    check_choice("logger", cfg.logger, LOGGERS)
    check_logger(cfg.logger)
    if not cfg.objective:
        raise ConfigError("objective must name at least one value, e.g. objective=[validation_accuracy]")
    for i, name in enumerate(cfg.objective):
        check_choice(f"objective[{i}]", name, OBJECTIVES)
        if name.startswith("validation") and not cfg.data.validation > 0:
            raise ConfigError(f"objective[{i}]={name} needs a validation split: set data.validation (e.g. 0.2)")
    if cfg.device != "auto":
        _check_device(cfg.device)
    for i, m in enumerate(cfg.optimizer.milestones):
        check_range(f"optimizer.milestones[{i}]", m, Range(0, 1, low_open=True, high_open=True))
    for i, ev in enumerate(cfg.evaluation.solvers):
        check_choice(f"evaluation.solvers[{i}].name", ev.name, sorted(set(SCHEMES) | set(ADAPTIVE_SOLVERS)))
        for key, rule in EVAL_RANGES.items():
            check_range(f"evaluation.solvers[{i}].{key}", getattr(ev, key), rule)
    if (cfg.trainer.iterations is None) == (cfg.trainer.epochs is None):
        raise ConfigError("give exactly one of trainer.iterations and trainer.epochs (set the other to null)")
    _check_model(cfg)
    _check_solver(cfg)
    _check_adaptation(cfg)


def _check_device(name: str) -> None:
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ConfigError(f"unknown device={name!r}; device must be auto, cpu, cuda or cuda:N")


def _check_model(cfg: Config) -> None:
    f = cfg.field
    if cfg.model.stem != "lift" and f.kind != "conv":
        raise ConfigError(f"model.stem={cfg.model.stem} is an image stem: it needs field.kind=conv")
    if f.tied_init and not f.untied:
        raise ConfigError("field.tied_init=true applies to a depth-indexed field only: set field.untied=true")
    if f.untied and (cfg.solver.steps is None or is_adaptive(cfg.solver.name)):
        raise ConfigError("field.untied=true needs a fixed step count (solver.steps): one weight set per step")
    if f.kind == "conv" and f.kernel % 2 == 0:
        raise ConfigError(f"field.kernel must be odd (the state keeps its size), got {f.kernel}")
    penalties = regularizers(cfg)
    if penalties and cfg.block.kind == "plain":
        raise ConfigError("regularization.kinetic / .jacobian need a residual or ODE block, not block=plain")


def _check_solver(cfg: Config) -> None:
    kind, s = cfg.block.kind, cfg.solver
    if is_adaptive(s.name):
        if kind in ("plain", "learned_steps"):
            raise ConfigError(
                f"block.kind={kind} is a discrete stack: use a fixed solver.name from {sorted(SCHEMES)}"
            )
        return
    if s.steps is None:
        raise ConfigError(f"solver.name={s.name} is fixed-step: solver.steps must be an integer >= 1, got null")
    if kind != "ode" and s.name not in SCHEMES:
        raise ConfigError(f"solver.name={s.name} exists only in torchdiffeq: use block=ode, or one of "
                          f"{sorted(SCHEMES)}")
    if kind == "plain" and s.name != "euler":
        raise ConfigError(f"block.kind=plain iterates x <- F(t, x): it has no scheme; use solver.name=euler, "
                          f"not {s.name}")


def _check_adaptation(cfg: Config) -> None:
    """The ``adaptation`` section makes sense with the rest of the config."""
    a = cfg.adaptation
    if not a.enabled:
        return
    fixed = sorted(set(SCHEMES) & set(TORCHDIFFEQ_FIXED))
    if cfg.solver.name not in fixed:
        raise ConfigError(
            f"adaptation.enabled=true adapts a fixed step: solver.name must be one of {fixed}, got {cfg.solver.name!r}"
        )
    check_choice("adaptation.test_solver", a.test_solver, sorted(TORCHDIFFEQ_FIXED))
    if cfg.block.kind not in ("residual", "ode"):
        raise ConfigError(f"adaptation.enabled=true needs block=residual or block=ode, got block.kind={cfg.block.kind}")
    if cfg.field.untied:
        raise ConfigError("adaptation.enabled=true changes h: an untied field (field.untied=true) has one weight set "
                          "per step of a fixed grid; use a tied field")
    lo = a.min_step_size if a.min_step_size is not None else cfg.block.T / 500
    hi = a.max_step_size if a.max_step_size is not None else cfg.block.T
    if lo > hi:
        raise ConfigError(f"adaptation.min_step_size ({lo:g}) must not exceed adaptation.max_step_size ({hi:g})")
