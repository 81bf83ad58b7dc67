"""A classifier = stem (lift / augment / downsample) -> block (the integrated field) -> head.

Image models come in two stems: ``lift`` (a 3x3 conv to ``width`` channels at full resolution) and
``downsample`` (Chen et al. 2018's MNIST ODE-Net: conv3x3, norm, ReLU, conv4x4 stride 2, norm, ReLU,
conv4x4 stride 2, so the field runs at a quarter of the resolution), whose head is norm, ReLU,
global average pooling and a linear layer. The ResNet and the ODE-Net on one field are the same
model: only the block's integrator differs, so they have the same parameters.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from ._args import check_flag, check_int
from .blocks import Block
from .fields import Augment

IMAGE_STEMS = ("lift", "downsample")
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: GroupNorm groups of the downsample stem and its head (Chen et al.'s ``norm(dim) = GroupNorm(min(32, dim), dim)``).
NORM_GROUPS = 32
DOWNSAMPLE_WIDTH = 64


def amp_safe(block: nn.Module) -> bool:
    """Whether ``block`` may run under autocast: every block but an adaptive (error-controlled) ``ODEBlock``
    (or any module whose ``adaptive`` attribute is true).

    An adaptive solver accepts a step when its error estimate is below ``atol + rtol |x|`` (1e-3 and
    smaller); in bfloat16 (8 bits of mantissa, relative resolution 4e-3) or float16 (1e-3) the estimate is
    rounding noise of that size, so step-size control degenerates (rejections, tiny steps, underflow).
    """
    return not bool(getattr(block, "adaptive", False))


class Classifier(nn.Module):
    """``head(block(stem(x)))``; ``with_solver`` swaps the block's integrator, sharing every weight.

    ``amp_dtype`` (``torch.bfloat16`` / ``torch.float16``, or None) runs the forward under ``torch.autocast``
    on the input's device: the stem, the head and a fixed-step block's field evaluations in reduced
    precision. The state between blocks is kept in float32 (a step adds ``h F`` to a float32 state), an
    adaptive ODE block runs entirely in float32 (see :func:`amp_safe`), and the logits are float32.
    """

    def __init__(self, stem: nn.Module, block: Block, head: nn.Module, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, module in (("stem", stem), ("block", block), ("head", head)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        if amp_dtype is not None and amp_dtype not in AMP_DTYPES.values():
            raise ValueError(
                f"amp_dtype must be None (full precision) or one of {list(AMP_DTYPES.values())}, got {amp_dtype!r}"
            )
        self.stem, self.block, self.head = stem, block, head
        self.amp_dtype = amp_dtype

    def forward(self, x: Tensor) -> Tensor:
        if self.amp_dtype is None:
            return self.head(self.block(self.stem(x)))
        device = x.device.type
        with torch.autocast(device, dtype=self.amp_dtype):
            z = self.stem(x).float()
            if amp_safe(self.block):
                z = self.block(z)
            else:
                with torch.autocast(device, enabled=False):
                    z = self.block(z)
            return self.head(z).float()

    def with_solver(self, solver: str, **options: Any) -> Classifier:
        """The same classifier (same stem, field and head objects, ``amp_dtype`` and training mode) integrated
        with ``solver`` (see :func:`with_solver` for any model)."""
        out = Classifier(self.stem, self.block.with_solver(solver, **options), self.head, self.amp_dtype)
        out.training = self.training  # the stem and head are shared: their modes stay as they are
        return out


def _blocks_in(model: nn.Module) -> dict[int, list[str]]:
    """Every distinct ``Block`` among ``model``'s submodules (``model`` itself included): id -> its paths."""
    found: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, Block):
            found.setdefault(id(module), []).append(name)
    return found


def _outermost(paths: dict[int, list[str]]) -> dict[int, list[str]]:
    """The blocks not inside another block (a field may hold blocks of its own: they go with their field)."""
    every = [p for ps in paths.values() for p in ps]
    inner = {i for i, ps in paths.items() for p in ps for q in every
             if q != p and (q == "" or p.startswith(q + "."))}
    return {i: ps for i, ps in paths.items() if i not in inner}


def with_solver(model: nn.Module, solver: str, **options: Any) -> nn.Module:
    """``model`` with its one odenet block re-made by ``block.with_solver(solver, **options)``: a shallow copy
    that shares every module and tensor but the new block (the same field object; no parameter is copied).

    The block may sit anywhere among the submodules (``model.encoder.ode``, a ``Sequential``'s entry, or the
    model itself, which is then simply ``model.with_solver``); the modules on the way to it are shallow-copied
    so that ``model`` keeps its block. A model with no block, or with more than one (blocks inside a block's
    field go with that block), is refused naming them. The new block has the old one's training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = _outermost(_blocks_in(model))
    if not found:
        raise ValueError(
            f"{type(model).__name__} holds no odenet block (ResidualStack, ODEBlock): nothing to re-integrate"
        )
    if len(found) > 1:
        names = sorted(p or "<the model>" for ps in found.values() for p in ps)
        raise ValueError(f"{type(model).__name__} holds {len(found)} odenet blocks ({', '.join(names)}): "
                         "with_solver(model, ...) needs exactly one; call with_solver on each block instead")
    paths = next(iter(found.values()))
    old = model.get_submodule(paths[0])
    assert isinstance(old, Block)
    new = old.with_solver(solver, **options)
    if paths == [""]:
        return new
    copies: dict[int, nn.Module] = {}  # id of a module on the way -> its shallow copy

    def copied(path: str) -> nn.Module:
        """The shallow copy of the module at ``path`` (its own dicts of children, parameters and buffers),
        linked into its parent's copy."""
        original = model.get_submodule(path)
        if id(original) not in copies:
            module = copy.copy(original)
            module._modules = dict(module._modules)
            module._parameters = dict(module._parameters)
            module._buffers = dict(module._buffers)
            copies[id(original)] = module
        module = copies[id(original)]
        if path:
            parent, _, name = path.rpartition(".")
            copied(parent)._modules[name] = module
        return module

    for path in paths:  # one block may be held under several names
        parent, _, name = path.rpartition(".")
        copied(parent)._modules[name] = new
    return copies[id(model)]


def group_norm(channels: int, groups: int = NORM_GROUPS) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it (``gcd``)."""
    check_int("channels", channels)
    check_int("groups", groups)
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def vector_stem(in_features: int, width: int | None, augment: int) -> tuple[nn.Module, int]:
    """Flatten, then a linear lift to ``width`` (if given) and ANODE zero padding; returns (stem, state dim)."""
    check_int("in_features", in_features)
    if width is not None:
        check_int("width", width)
    check_int("augment", augment, low=0)
    layers: list[nn.Module] = [nn.Flatten()]
    dim = in_features
    if width is not None:
        layers.append(nn.Linear(in_features, width))
        dim = width
    if augment:
        layers.append(Augment(augment, dim=-1))
        dim += augment
    return nn.Sequential(*layers), dim


def image_stem(
    in_channels: int, width: int | None, augment: int, kind: str = "lift", groups: int = NORM_GROUPS
) -> tuple[nn.Module, int]:
    """An image stem and the state's channels; ANODE zero channels (``augment``) come after it.

    ``lift``: a 3x3 conv to ``width`` channels (if given), same resolution. ``downsample``: Chen et al.'s
    conv3x3 (no padding), norm, ReLU, conv4x4 stride 2, norm, ReLU, conv4x4 stride 2 to ``width`` (default
    64) channels: 28x28 -> 6x6 (MNIST), 32x32 -> 7x7 (CIFAR-10). The norms are GroupNorm with ``groups``
    groups (32: Chen et al.'s; keep several channels per group, e.g. 8 for 16 channels: one channel per
    group is instance norm, which before the head's pooling erases most of what the state carries).
    """
    if not isinstance(kind, str) or kind not in IMAGE_STEMS:
        raise ValueError(f"unknown stem kind={kind!r} (model.stem); kind must be one of {list(IMAGE_STEMS)}")
    check_int("in_channels", in_channels)
    if width is not None:
        check_int("width", width)
    check_int("augment", augment, low=0)
    check_int("groups", groups)
    layers: list[nn.Module] = []
    channels = in_channels
    if kind == "downsample":
        channels = DOWNSAMPLE_WIDTH if width is None else width
        layers += [
            nn.Conv2d(in_channels, channels, 3, 1),
            group_norm(channels, groups),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, 2, 1),
            group_norm(channels, groups),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, 2, 1),
        ]
    elif width is not None:
        layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
        channels = width
    if augment:
        layers.append(Augment(augment, dim=-3))
        channels += augment
    return nn.Sequential(*layers), channels


def vector_head(dim: int, num_classes: int) -> nn.Module:
    check_int("dim", dim)
    check_int("num_classes", num_classes)
    return nn.Linear(dim, num_classes)


def image_head(channels: int, num_classes: int, norm: bool = False, groups: int = NORM_GROUPS) -> nn.Module:
    """Global average pooling and a linear layer; ``norm=True`` puts GroupNorm (``groups``) and ReLU first
    (Chen et al.'s head)."""
    check_int("channels", channels)
    check_int("num_classes", num_classes)
    check_flag("norm", norm)
    check_int("groups", groups)
    layers: list[nn.Module] = [group_norm(channels, groups), nn.ReLU()] if norm else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_breakdown(model: Classifier) -> dict[str, int]:
    """Trainable parameters of the stem, the field, the rest of the block (learned step sizes), the head, in all."""
    field = count_parameters(model.block.field)
    return {
        "stem": count_parameters(model.stem),
        "field": field,
        "block_other": count_parameters(model.block) - field,
        "head": count_parameters(model.head),
        "total": count_parameters(model),
    }


def format_parameters(breakdown: dict[str, int]) -> str:
    """``stem 132,096 + field 75,392 + head 778 = 208,266 (0.21M)``."""
    parts = [f"{k} {v:,}" for k, v in breakdown.items() if k != "total" and (v or k != "block_other")]
    total = breakdown["total"]
    return " + ".join(parts) + f" = {total:,} ({total / 1e6:.2f}M)"


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
