"""From a config to objects, through registries: field, block, classifier, optimiser and schedule.

Each registry maps a config name to a builder; :mod:`odenet.runner.validate` checks names against them before
anything is built. A new field is one class (``odenet.fields``) plus one :func:`register_field` entry and a YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..blocks import Block, make_block
from ..fields import Conv1dField, ConvField, DepthIndexedField, LinearField, MLPField, kaiming_init
from ..growth import insert_steps, refine_grid, spread_positions
from ..models import (
    AMP_DTYPES,
    Classifier,
    flat_size,
    image_head,
    image_stem,
    vector_head,
    vector_stem,
)
from ..regularization import REGULARIZERS
from ..solvers import is_adaptive
from .accel import fused_adam
from .config import Config, FieldConfig
from .errors import ConfigError, check_choice

HEADS = ("linear", "identity")
#: model.arch choices: odenet (stem -> one block -> head) | he (:func:`odenet.staged.he_classifier`)
ARCHS = ("odenet", "he")
#: model.init choices: default (PyTorch's, then field.init) | kaiming (Ott et al.: every conv / linear layer of the
#: whole model, :func:`odenet.fields.kaiming_init`)
MODEL_INITS = ("default", "kaiming")

FieldBuilder = Callable[[FieldConfig, int], tuple[nn.Module, Any]]
#: field.kind -> builder(cfg, dim) -> (field, its last layer or None): the last layer is zeroed by field.zero_init.
FIELDS: dict[str, FieldBuilder] = {}


def register_field(kind: str) -> Callable[[FieldBuilder], FieldBuilder]:
    """Decorator registering a field builder under ``field.kind=kind``."""

    def deco(fn: FieldBuilder) -> FieldBuilder:
        FIELDS[kind] = fn
        return fn

    return deco


@register_field("linear")
def _linear_field(cfg: FieldConfig, dim: int) -> tuple[nn.Module, Any]:
    return LinearField(dim, zero_init=cfg.zero_init), None


@register_field("mlp")
def _mlp_field(cfg: FieldConfig, dim: int) -> tuple[nn.Module, Any]:
    field = MLPField(dim, cfg.hidden, cfg.depth, cfg.activation, cfg.time)  # type: ignore[arg-type]
    return field, field.linears[-1]


@register_field("conv")
def _conv_field(cfg: FieldConfig, dim: int) -> tuple[nn.Module, Any]:
    field = ConvField(
        dim, cfg.hidden, cfg.depth, cfg.kernel, cfg.activation, cfg.time,  # type: ignore[arg-type]
        groupnorm=cfg.groupnorm, groups=cfg.groups, preact=cfg.preact,
    )
    return field, field.convs[-1]


@register_field("conv1d")
def _conv1d_field(cfg: FieldConfig, dim: int) -> tuple[nn.Module, Any]:
    if cfg.time != "none":
        raise ConfigError(f"field.kind=conv1d (Ott et al.'s Sphere2 field) is autonomous: use field.time=none, "
                          f"got {cfg.time}")
    field = Conv1dField(dim, cfg.hidden, cfg.kernel, cfg.activation)
    return field, field.convs[-1]


def regularizers(cfg: Config) -> tuple[str, ...]:
    """The penalties with a positive weight in ``regularization``."""
    return tuple(name for name in REGULARIZERS if getattr(cfg.regularization, name) > 0)


#: field.init choices (``he``: :func:`he_init`, mlp fields only).
FIELD_INITS = ("default", "he")


def he_init(field: nn.Module) -> None:
    """Variance-preserving ReLU init of an MLP field: ``N(0, 2/fan_in)`` for each linear layer followed by the
    activation, ``N(0, 1/fan_in)`` for the last (its output feeds the next layer linearly), zero biases."""
    linears = list(field.linears)  # type: ignore[union-attr]
    for i, linear in enumerate(linears):
        gain = 2.0 if i < len(linears) - 1 else 1.0
        nn.init.normal_(linear.weight, std=(gain / linear.weight.shape[1]) ** 0.5)
        nn.init.zeros_(linear.bias)


def check_field_config(cfg: FieldConfig, steps: int | None) -> None:
    """``field.untied`` / ``field.tied_init`` fit a stack of ``steps`` fixed steps (None: no fixed step count)."""
    check_choice("field.init", cfg.init, list(FIELD_INITS))
    if cfg.init == "he" and cfg.kind != "mlp":
        raise ConfigError(f"field.init=he applies to field.kind=mlp, got field.kind={cfg.kind}")
    if cfg.tied_init and not cfg.untied:
        raise ConfigError("field.tied_init=true applies to a depth-indexed field only: set field.untied=true")
    if cfg.untied and steps is None:
        raise ConfigError("field.untied=true needs a fixed step count (solver.steps): one weight set per step")


def build_field(cfg: FieldConfig, dim: int, steps: int | None, T: float) -> nn.Module:
    """The vector field on states of ``dim`` features (mlp) or channels (conv)."""
    check_choice("field.kind", cfg.kind, list(FIELDS))
    check_field_config(cfg, steps)

    def make() -> nn.Module:
        field, last = FIELDS[cfg.kind](cfg, dim)
        if cfg.init == "he":
            he_init(field)
        if cfg.zero_init and last is not None:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        return field

    if cfg.untied:
        field = DepthIndexedField(make, steps, T)
        if cfg.tied_init:
            first = field.layers[0].state_dict()
            for layer in field.layers[1:]:
                layer.load_state_dict(first)
        return field
    return make()


BlockBuilder = Callable[[Config], dict[str, Any]]
#: block.kind -> the ``make_block`` options of a fixed-step solve (adaptive solvers always give an ODE block).
BLOCKS: dict[str, BlockBuilder] = {
    "residual": lambda cfg: dict(steps=cfg.solver.steps, shortcut=True, learn_steps=False),
    "plain": lambda cfg: dict(steps=cfg.solver.steps, shortcut=False, learn_steps=False),
    "learned_steps": lambda cfg: dict(steps=cfg.solver.steps, shortcut=True, learn_steps=True),
    "ode": lambda cfg: dict(step_size=cfg.block.T / cfg.solver.steps, adjoint=cfg.solver.adjoint),
}


def block_options(cfg: Config) -> tuple[str, dict[str, Any]]:
    """``(solver, options)`` for ``make_block`` from the block and solver configs (validated by ``validate``).

    An adaptive solver always gives an ODE block; ``block=ode`` with a fixed scheme uses
    torchdiffeq's fixed grid with ``step_size = T / steps``.
    """
    s = cfg.solver
    check_choice("block.kind", cfg.block.kind, list(BLOCKS))
    penalties = regularizers(cfg)
    reg: dict[str, Any] = dict(regularizers=penalties, noise=cfg.regularization.noise) if penalties else {}
    if is_adaptive(s.name):
        if penalties:
            reg["penalty_error_control"] = cfg.regularization.error_control
        return s.name, dict(rtol=s.rtol, atol=s.atol, adjoint=s.adjoint, max_steps=s.max_steps, backend=s.backend,
                            **reg)
    return s.name, {**BLOCKS[cfg.block.kind](cfg), **reg}


def check_arch(cfg: Config) -> None:
    """``model.arch=he`` (He et al.'s staged net) fits the rest of the config: images, a plain or residual Euler
    stack of ``solver.steps = 3 n`` blocks, nothing that needs a field of its own."""
    check_choice("model.arch", cfg.model.arch, ARCHS)
    if cfg.model.arch != "he":
        return
    s, fix = cfg.solver, "model.arch=he is He et al.'s staged net (h = 1)"
    if cfg.block.kind not in ("plain", "residual") or s.name != "euler" or not s.steps or s.steps % 3:
        raise ConfigError(f"{fix}: it needs block=plain or residual, solver.name=euler and solver.steps = 3 n "
                          f"(n blocks per stage), got block.kind={cfg.block.kind}, solver={s.name}, steps={s.steps}")
    others = [("field.kind=conv", cfg.field.kind != "conv"), ("field.untied=false", cfg.field.untied),
              ("model.stem=lift", cfg.model.stem != "lift"), ("model.head=linear", cfg.model.head != "linear"),
              ("model.augment_dim=0", cfg.model.augment_dim != 0), ("model.init=default", cfg.model.init != "default"),
              ("no regularization", bool(regularizers(cfg))), ("adaptation.enabled=false", cfg.adaptation.enabled),
              ("growth.mode=none", cfg.growth.mode != "none"), ("trainer.ensemble=1", cfg.trainer.ensemble > 1),
              ("trainer.compile=false", cfg.trainer.compile), ("trainer.amp=false", cfg.trainer.amp)]
    for want, bad in others:
        if bad:
            raise ConfigError(f"{fix}: it builds its own untied BN conv blocks and needs {want}")
    for key in ("gradients", "trajectory", "adaptive_steps", "depth"):  # they read an ODE block's field or states
        if getattr(cfg.analysis, key):
            raise ConfigError(f"{fix}: analysis.{key} needs a block on a field; set analysis.{key}=false")
    for i, ev in enumerate(cfg.evaluation.solvers):  # a staged net has no other scheme or step count
        if ev.name != "euler" or (ev.steps != s.steps if ev.steps is not None else ev.step_factor != 1):
            raise ConfigError(f"{fix}: evaluation.solvers[{i}] must be euler at the training steps ({s.steps}), "
                              f"got name={ev.name}, steps={ev.steps}, step_factor={ev.step_factor}")


def _he_model(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """He et al.'s staged net (``odenet.staged``): ``n = solver.steps / 3`` blocks per stage, ``model.width``
    (default 16) channels in the first stage, ``field.preact`` for the pre-activation block."""
    from ..staged import he_classifier

    check_arch(cfg)
    if len(input_shape) != 3:
        raise ValueError(f"model.arch=he needs image data (C, H, W); data.name={cfg.data.name} gives {input_shape} "
                         "(digits: data.as_images=true)")
    return he_classifier(input_shape[0], num_classes, cfg.solver.steps // 3, cfg.model.width or 16,
                         shortcut=cfg.block.kind == "residual", preact=cfg.field.preact)


def build_model(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """Stem -> block on the configured field -> head, for vector or image inputs.

    ``num_classes`` is the number of outputs (classes, or regression targets). ``model.head=identity``
    makes the block's final state the output: the state must then have ``num_classes`` features.
    """
    check_choice("model.head", cfg.model.head, HEADS)
    check_choice("model.init", cfg.model.init, MODEL_INITS)
    if cfg.model.arch != "odenet":
        return _he_model(cfg, input_shape, num_classes)
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
    model = Classifier(stem, block, head, amp_dtype=amp)
    if cfg.model.init == "kaiming":
        kaiming_init(model)
    return model


def grown_block(cfg: Config, block: Any) -> Any:
    """``block`` grown as ``cfg.growth`` says (``odenet.growth``), sharing its parameters; ``block`` itself for
    growth.mode none / control."""
    g = cfg.growth
    if g.mode in ("identity", "default"):
        return insert_steps(block, spread_positions(block.steps, g.insert), init=g.mode, share=True)
    if g.mode == "refine":
        return refine_grid(block, g.factor, share=True)
    return block


def build_model_for(cfg: Config) -> Classifier:
    """The configured model for its data set's input shape and class count (what a run folder's model needs)."""
    from ..data import load_dataset

    d = cfg.data
    data = load_dataset(d.name, root=d.root, n_train=8, n_test=8, seed=d.seed, dim=d.dim, noise=d.noise,
                        as_images=d.as_images, synthetic=d.synthetic)
    return build_model(cfg, data.input_shape, data.num_classes)


OPTIMIZERS: dict[str, Callable[[Any, Any], torch.optim.Optimizer]] = {
    "adam": lambda params, o: torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay),
    "sgd": lambda params, o: torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                             nesterov=o.nesterov),
}
SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, Any, int], Any]] = {
    "none": lambda opt, o, total: None,
    "cosine": lambda opt, o, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
    "step": lambda opt, o, total: torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=sorted(int(f * total) for f in o.milestones), gamma=o.gamma),
}


def build_optimizer(cfg: Config, model: nn.Module, total_iterations: int):
    """The optimiser and its per-iteration learning-rate schedule (or None)."""
    o = cfg.optimizer
    check_choice("optimizer.name", o.name, list(OPTIMIZERS))
    check_choice("optimizer.schedule", o.schedule, list(SCHEDULES))
    if not o.step_lr_scale > 0:
        raise ValueError(f"optimizer.step_lr_scale must be positive, got {o.step_lr_scale}")
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if o.step_lr_scale != 1.0:  # learned step logits in their own group (the schedule scales both groups alike)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        steps = [p for n, p in named if n.rsplit(".", 1)[-1] == "step_logits"]
        params = [{"params": [p for n, p in named if n.rsplit(".", 1)[-1] != "step_logits"]}]
        if steps:
            params.append({"params": steps, "lr": o.lr * o.step_lr_scale})
    optimizer = OPTIMIZERS[o.name](params, o)
    if cfg.trainer.compile:  # Adam as one fused kernel per step (benchmarks/step.py)
        optimizer = fused_adam(optimizer)
    return optimizer, SCHEDULES[o.schedule](optimizer, o, total_iterations)
