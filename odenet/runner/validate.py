"""Every check of a run's config, in one place, run once before anything is written.

:func:`validate` raises :class:`ConfigError` (a ``ValueError``) whose message names the config key and the fix.
Names are checked against the registries (:mod:`odenet.runner.build`, :mod:`odenet.data`), numbers against the
ranges in :data:`RANGES`, and the combinations that cannot work together are refused.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ..adaptive import BACKENDS, EMBEDDED_PAIRS
from ..models import AMP_DTYPES, IMAGE_STEMS
from ..regularization import NOISES
from ..solvers import ADAPTIVE_SOLVERS, SCHEMES, TORCHDIFFEQ_FIXED, all_solver_names, is_adaptive
from .adaptation import INITIAL_RULES
from .build import BLOCKS, FIELDS, HEADS, OPTIMIZERS, SCHEDULES, check_arch, check_field_config, regularizers
from .config import Config, check_keys
from .errors import ConfigError, check_choice
from .ranges import LOGGERS, OBJECTIVES, RANGES, Range, check_ranges
from .tracking import check_logger

__all__ = ["ConfigError", "RANGES", "Range", "check_choice", "validate"]


def validate(cfg: Config) -> None:
    """Every name, number and combination in ``cfg`` (a ConfigError naming the key otherwise)."""
    from ..data import DATASETS
    from .accel import AUGMENTATIONS

    if isinstance(cfg, DictConfig):
        check_keys(cfg)

    check_ranges(cfg)
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
    for i, ev in enumerate(cfg.evaluation.solvers):
        check_choice(f"evaluation.solvers[{i}].name", ev.name, sorted(set(SCHEMES) | set(ADAPTIVE_SOLVERS)))
    if (cfg.trainer.iterations is None) == (cfg.trainer.epochs is None):
        raise ConfigError("give exactly one of trainer.iterations and trainer.epochs (set the other to null)")
    _check_model(cfg)
    _check_solver(cfg)
    _check_adaptation(cfg)
    _check_growth(cfg)
    if cfg.trainer.ensemble > 1:
        _check_ensemble(cfg)


def _check_device(name: str) -> None:
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise ConfigError(f"unknown device={name!r}; device must be auto, cpu, cuda or cuda:N")


def _check_model(cfg: Config) -> None:
    f = cfg.field
    if cfg.model.stem != "lift" and f.kind != "conv":
        raise ConfigError(f"model.stem={cfg.model.stem} is an image stem: it needs field.kind=conv")
    check_field_config(f, None if is_adaptive(cfg.solver.name) else cfg.solver.steps)
    check_arch(cfg)
    if cfg.model.init == "kaiming" and (f.zero_init or f.init != "default"):
        raise ConfigError(f"model.init=kaiming redraws every layer after the field is built, overwriting "
                          f"field.zero_init={str(f.zero_init).lower()} / field.init={f.init}: keep only one of them")
    if f.kind == "conv" and f.kernel % 2 == 0:
        raise ConfigError(f"field.kernel must be odd (the state keeps its size), got {f.kernel}")
    penalties = regularizers(cfg)
    if penalties and cfg.block.kind == "plain":
        raise ConfigError("regularization.kinetic / .jacobian need a residual or ODE block, not block=plain")


def _check_solver(cfg: Config) -> None:
    kind, s = cfg.block.kind, cfg.solver
    check_choice("solver.backend", s.backend, list(BACKENDS))
    if s.backend == "odenet" and (s.name not in EMBEDDED_PAIRS or s.adjoint):
        raise ConfigError(f"solver.backend=odenet solves {sorted(EMBEDDED_PAIRS)} without the adjoint, not solver.name="
                          f"{s.name} solver.adjoint={str(s.adjoint).lower()}: use solver.backend=torchdiffeq")
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


def _check_growth(cfg: Config) -> None:
    """The ``growth`` section fits the block it grows (``odenet.runner.growth``)."""
    from .growth import GROWING, GROWTH_MODES

    g = cfg.growth
    check_choice("growth.mode", g.mode, list(GROWTH_MODES))
    if g.mode not in GROWING:
        return
    fix = "or set growth.mode=none"
    if cfg.block.kind not in ("residual", "plain") or is_adaptive(cfg.solver.name):
        raise ConfigError(f"growth.mode={g.mode} grows a fixed-step stack: use block=residual or block=plain with "
                          f"a fixed solver.name, not block.kind={cfg.block.kind} solver.name={cfg.solver.name}; {fix}")
    if g.mode == "refine" and cfg.block.kind != "residual":
        raise ConfigError(f"growth.mode=refine refines the step size: block.kind={cfg.block.kind} has none; use "
                          f"block=residual, or growth.mode=identity / default (new layers) {fix}")
    if g.mode != "refine":
        if not cfg.field.untied or cfg.solver.name != "euler":
            raise ConfigError(f"growth.mode={g.mode} inserts layers into an untied Euler stack: set field.untied=true "
                              f"and solver.name=euler (now {cfg.field.untied} / {cfg.solver.name}), or use "
                              f"growth.mode=refine for a tied field")
        if g.mode == "identity" and cfg.field.kind == "conv" and cfg.field.groupnorm:
            raise ConfigError("growth.mode=identity zeroes the field's last conv: it needs field.groupnorm=false "
                              "(a norm after it is not zero); use growth.mode=default")
    if cfg.optimizer.schedule != "none":
        raise ConfigError(f"growth.mode={g.mode} adds parameters mid-run, which a learning-rate schedule does not "
                          f"follow: set optimizer.schedule=none (now {cfg.optimizer.schedule}), {fix}")
    for key, on in (("adaptation.enabled", cfg.adaptation.enabled), ("trainer.compile", cfg.trainer.compile),
                    ("trainer.ensemble > 1", cfg.trainer.ensemble > 1),
                    # new layers: the init and trained parameter sets differ, no segment between them
                    ("analysis.interpolation", cfg.analysis.interpolation and g.mode != "refine")):
        if on:
            raise ConfigError(f"growth.mode={g.mode} cannot be combined with {key}: turn that off, {fix}")


def _check_adaptation(cfg: Config) -> None:
    """The ``adaptation`` section makes sense with the rest of the config."""
    a = cfg.adaptation
    check_choice("adaptation.initial", a.initial, INITIAL_RULES)
    if not a.enabled:
        return
    fixed = sorted(set(SCHEMES) & set(TORCHDIFFEQ_FIXED))  # odenet's tableaus: each has the order hairer needs
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


def _check_ensemble(cfg: Config) -> None:
    """``trainer.ensemble=K`` batches K seeds into one training: refuse what would couple the members or break the
    match with K separate runs (odenet.runner.ensemble)."""
    k, r = cfg.trainer.ensemble, cfg.regularization
    adaptive, own = is_adaptive(cfg.solver.name), cfg.solver.backend == "odenet"
    refused = [
        (adaptive and not own, f"solver.name={cfg.solver.name} on torchdiffeq (its step control would be shared by "
         "every member)", "use solver.backend=odenet (each member takes its own steps) or a fixed-step solver"),
        (adaptive and own and cfg.field.kind != "mlp", f"an adaptive solve of field.kind={cfg.field.kind}",
         "use field.kind=mlp"),
        (cfg.block.kind == "ode" and not adaptive, "block=ode on a fixed grid (torchdiffeq)",
         "use block=residual, plain or learned_steps"),
        (cfg.adaptation.enabled, "adaptation.enabled=true (one step size adapted per run)", ""),
        (cfg.data.augment != "none", f"data.augment={cfg.data.augment} (draws from each run's global RNG)", ""),
        (r.kinetic > 0 or r.jacobian > 0, "regularization.kinetic / .jacobian", ""),
        (cfg.trainer.amp, "trainer.amp=true", ""),
    ]
    for bad, what, fix in refused:
        if bad:
            raise ConfigError(f"trainer.ensemble={k} cannot batch {what}: {fix + ', or ' if fix else ''}train the "
                              "seeds as separate runs (trainer.ensemble=1)")
