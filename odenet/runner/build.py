"""From a config to objects: field, block, classifier, optimiser and schedule.

Each builder checks its names first, so an unknown name fails at start with the valid ones listed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..blocks import Block, make_block
from ..fields import ConvField, DepthIndexedField, LinearField, MLPField
from ..models import (
    AMP_DTYPES,
    IMAGE_STEMS,
    Classifier,
    flat_size,
    image_head,
    image_stem,
    vector_head,
    vector_stem,
)
from ..regularization import NOISES, REGULARIZERS
from ..solvers import ADAPTIVE_SOLVERS, SCHEMES, all_solver_names, is_adaptive
from .adaptation import check_adaptation
from .config import Config, EvalSolverConfig, FieldConfig

FIELD_KINDS = ("mlp", "conv", "linear")
HEADS = ("linear", "identity")
BLOCK_KINDS = ("residual", "plain", "learned_steps", "ode")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "cosine", "step")
DEFAULT_EVAL_RTOL, DEFAULT_EVAL_ATOL = 1e-6, 1e-8


def check_choice(key: str, value: str, valid: tuple[str, ...] | list[str]) -> None:
    """A ValueError naming the config key and listing the valid values."""
    if value not in valid:
        raise ValueError(f"unknown {key}={value!r}; {key} must be one of {sorted(valid)}")


def check_config(cfg: Config) -> None:
    """Every name in the config is a known one (called before any work is done)."""
    from ..data import DATASETS

    check_choice("data.name", cfg.data.name, list(DATASETS))
    check_choice("field.kind", cfg.field.kind, FIELD_KINDS)
    check_choice("block.kind", cfg.block.kind, BLOCK_KINDS)
    check_choice("model.head", cfg.model.head, HEADS)
    check_choice("solver.name", cfg.solver.name, all_solver_names())
    check_choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    check_choice("optimizer.schedule", cfg.optimizer.schedule, SCHEDULES)
    for i, ev in enumerate(cfg.evaluation.solvers):
        check_choice(f"evaluation.solvers[{i}].name", ev.name, sorted(set(SCHEMES) | set(ADAPTIVE_SOLVERS)))
    if (cfg.trainer.iterations is None) == (cfg.trainer.epochs is None):
        raise ValueError("give exactly one of trainer.iterations and trainer.epochs (set the other to null)")
    for key in ("trainer.batch_size", "trainer.log_every", "trainer.checkpoint_every"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ValueError(f"{key} must be >= 1")
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be >= 1 or null, got {cfg.threads}")
    if cfg.optimizer.lr <= 0:
        raise ValueError(f"optimizer.lr must be positive, got {cfg.optimizer.lr}")
    regularizers(cfg)
    check_adaptation(cfg)
    check_images(cfg)


def check_images(cfg: Config) -> None:
    """The image-model and device options: stem, mixed precision, augmentation (issue 7)."""
    from .accel import AUGMENTATIONS

    check_choice("model.stem", cfg.model.stem, IMAGE_STEMS)
    check_choice("trainer.amp_dtype", cfg.trainer.amp_dtype, list(AMP_DTYPES))
    check_choice("data.augment", cfg.data.augment, AUGMENTATIONS)
    if cfg.model.stem != "lift" and cfg.field.kind != "conv":
        raise ValueError(f"model.stem={cfg.model.stem} is an image stem: it needs field.kind=conv")
    if cfg.data.crop_padding < 0:
        raise ValueError(f"data.crop_padding must be >= 0, got {cfg.data.crop_padding}")


def build_field(cfg: FieldConfig, dim: int, steps: int | None, T: float) -> nn.Module:
    """The vector field on states of ``dim`` features (mlp) or channels (conv)."""
    check_choice("field.kind", cfg.kind, FIELD_KINDS)

    def make() -> nn.Module:
        if cfg.kind == "linear":
            return LinearField(dim, zero_init=cfg.zero_init)
        if cfg.kind == "mlp":
            field: nn.Module = MLPField(dim, cfg.hidden, cfg.depth, cfg.activation, cfg.time)  # type: ignore[arg-type]
            last = field.linears[-1]
        else:
            field = ConvField(
                dim, cfg.hidden, cfg.depth, cfg.kernel, cfg.activation, cfg.time,  # type: ignore[arg-type]
                groupnorm=cfg.groupnorm, groups=cfg.groups, preact=cfg.preact,
            )
            last = field.convs[-1]
        if cfg.zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        return field

    if cfg.untied:
        if steps is None:
            raise ValueError("field.untied=true needs a fixed step count (solver.steps): one weight set per step")
        field = DepthIndexedField(make, steps, T)
        if cfg.tied_init:
            first = field.layers[0].state_dict()
            for layer in field.layers[1:]:
                layer.load_state_dict(first)
        return field
    if cfg.tied_init:
        raise ValueError("field.tied_init=true applies to a depth-indexed field only: set field.untied=true")
    return make()


def block_options(cfg: Config) -> tuple[str, dict[str, Any]]:
    """``(solver, options)`` for ``make_block`` from the block and solver configs.

    An adaptive solver always gives an ODE block; ``block=ode`` with a fixed scheme uses
    torchdiffeq's fixed grid with ``step_size = T / steps``.
    """
    kind, s = cfg.block.kind, cfg.solver
    check_choice("block.kind", kind, BLOCK_KINDS)
    check_choice("solver.name", s.name, all_solver_names())
    penalties = regularizers(cfg)
    if penalties and kind == "plain":
        raise ValueError("regularization.kinetic / .jacobian need a residual or ODE block, not block=plain")
    reg = dict(regularizers=penalties, noise=cfg.regularization.noise) if penalties else {}
    if is_adaptive(s.name):
        if kind in ("plain", "learned_steps"):
            raise ValueError(f"block.kind={kind} is a discrete stack: use a fixed solver.name from {sorted(SCHEMES)}")
        if penalties:
            reg["penalty_error_control"] = cfg.regularization.error_control
        return s.name, dict(rtol=s.rtol, atol=s.atol, adjoint=s.adjoint, max_steps=s.max_steps, **reg)
    if s.steps is None or s.steps < 1:
        raise ValueError(f"solver.name={s.name} is fixed-step: solver.steps must be an integer >= 1, got {s.steps}")
    if kind == "ode":
        return s.name, dict(step_size=cfg.block.T / s.steps, adjoint=s.adjoint, **reg)
    if s.name not in SCHEMES:
        raise ValueError(f"solver.name={s.name} exists only in torchdiffeq: use block=ode, or one of {sorted(SCHEMES)}")
    return s.name, dict(steps=s.steps, shortcut=kind != "plain", learn_steps=kind == "learned_steps", **reg)


def regularizers(cfg: Config) -> tuple[str, ...]:
    """The penalties with a positive weight in ``regularization`` (checked: weights >= 0, a known noise)."""
    r = cfg.regularization
    for name in REGULARIZERS:
        if getattr(r, name) < 0:
            raise ValueError(f"regularization.{name} is a penalty weight: it must be >= 0, got {getattr(r, name)}")
    check_choice("regularization.noise", r.noise, NOISES)
    return tuple(name for name in REGULARIZERS if getattr(r, name) > 0)


def build_model(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """Stem -> block on the configured field -> head, for vector or image inputs.

    ``num_classes`` is the number of outputs (classes, or regression targets). ``model.head=identity``
    makes the block's final state the output: the state must then have ``num_classes`` features.
    """
    check_choice("model.head", cfg.model.head, HEADS)
    images = cfg.field.kind == "conv"
    if images:
        if len(input_shape) != 3:
            raise ValueError(
                f"field.kind=conv needs image data (C, H, W); data.name={cfg.data.name} gives {input_shape}"
            )
        groups = cfg.field.groups  # the downsample stem and its head norm like the field
        stem, dim = image_stem(input_shape[0], cfg.model.width, cfg.model.augment_dim, cfg.model.stem, groups)
        head = image_head(dim, num_classes, norm=cfg.model.stem == "downsample", groups=groups)
    else:
        stem, dim = vector_stem(flat_size(input_shape), cfg.model.width, cfg.model.augment_dim)
        head = vector_head(dim, num_classes)
    if cfg.model.head == "identity":
        if images or dim != num_classes:
            raise ValueError(
                f"model.head=identity needs a vector state with as many features as outputs ({num_classes}); "
                f"the state has {dim if not images else 'image channels'}: use model.head=linear"
            )
        head = nn.Identity()
    solver, options = block_options(cfg)
    field = build_field(cfg.field, dim, options.get("steps"), cfg.block.T)
    block: Block = make_block(field, solver, T=cfg.block.T, **options)
    amp = AMP_DTYPES[cfg.trainer.amp_dtype] if cfg.trainer.amp else None  # autocast on the input's device
    return Classifier(stem, block, head, amp_dtype=amp)


def build_model_for(cfg: Config) -> Classifier:
    """The configured model for its data set's input shape and class count (what a run folder's model needs)."""
    from ..data import load_dataset

    d = cfg.data
    data = load_dataset(d.name, root=d.root, n_train=8, n_test=8, seed=d.seed, dim=d.dim, noise=d.noise,
                        as_images=d.as_images, synthetic=d.synthetic)
    return build_model(cfg, data.input_shape, data.num_classes)


def eval_options(ev: EvalSolverConfig, train_steps: int | None, train_step_size: float | None = None) -> dict[str, Any]:
    """``with_solver`` options of one evaluation entry (steps from ``step_factor`` x the training step).

    A training step that is no ``T / N`` (``train_steps`` None, ``train_step_size`` h, as after step-size
    adaptation) gives ``step_size = step_factor x h``: a torchdiffeq fixed grid.
    """
    if is_adaptive(ev.name):
        return dict(
            rtol=ev.rtol if ev.rtol is not None else DEFAULT_EVAL_RTOL,
            atol=ev.atol if ev.atol is not None else DEFAULT_EVAL_ATOL,
        )
    if ev.steps is not None:
        return dict(steps=ev.steps)
    if ev.step_factor is not None:
        if train_steps is None and train_step_size is None:
            raise ValueError(f"evaluation {ev.name} with step_factor needs a fixed-step training solver; give steps")
        if ev.step_factor <= 0:
            raise ValueError(f"evaluation step_factor must be positive, got {ev.step_factor}")
        if train_steps is None:
            return dict(step_size=train_step_size * ev.step_factor)
        return dict(steps=max(1, round(train_steps / ev.step_factor)))
    raise ValueError(f"evaluation {ev.name}: give steps or step_factor")


def build_optimizer(cfg: Config, model: nn.Module, total_iterations: int):
    """The optimiser and its per-iteration learning-rate schedule (or None)."""
    o = cfg.optimizer
    check_choice("optimizer.name", o.name, OPTIMIZERS)
    check_choice("optimizer.schedule", o.schedule, SCHEDULES)
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if o.step_lr_scale <= 0:
        raise ValueError(f"optimizer.step_lr_scale must be positive, got {o.step_lr_scale}")
    if o.step_lr_scale != 1.0:  # learned step logits in their own group (the schedule scales both groups alike)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        steps = [p for n, p in named if n.rsplit(".", 1)[-1] == "step_logits"]
        params = [{"params": [p for n, p in named if n.rsplit(".", 1)[-1] != "step_logits"]}]
        if steps:
            params.append({"params": steps, "lr": o.lr * o.step_lr_scale})
    if o.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
    if o.schedule == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_iterations
        )
    elif o.schedule == "step":
        milestones = sorted(int(f * total_iterations) for f in o.milestones)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=o.gamma)
    else:
        scheduler = None
    return optimizer, scheduler
