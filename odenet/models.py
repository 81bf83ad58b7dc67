"""A classifier = stem (lift / augment) -> block (the integrated field) -> head."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .blocks import Block
from .fields import Augment


class Classifier(nn.Module):
    """``head(block(stem(x)))``; ``with_solver`` swaps the block's integrator, sharing every weight."""

    def __init__(self, stem: nn.Module, block: Block, head: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = stem, block, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)))

    def with_solver(self, solver: str, **options: Any) -> Classifier:
        """The same classifier (same stem, field and head objects) integrated with ``solver``."""
        return Classifier(self.stem, self.block.with_solver(solver, **options), self.head)


def vector_stem(in_features: int, width: int | None, augment: int) -> tuple[nn.Module, int]:
    """Flatten, then a linear lift to ``width`` (if given) and ANODE zero padding; returns (stem, state dim)."""
    layers: list[nn.Module] = [nn.Flatten()]
    dim = in_features
    if width is not None:
        layers.append(nn.Linear(in_features, width))
        dim = width
    if augment:
        layers.append(Augment(augment, dim=-1))
        dim += augment
    return nn.Sequential(*layers), dim


def image_stem(in_channels: int, width: int | None, augment: int) -> tuple[nn.Module, int]:
    """A 3x3 conv lift to ``width`` channels (if given) and channel zero padding; returns (stem, channels)."""
    layers: list[nn.Module] = []
    channels = in_channels
    if width is not None:
        layers.append(nn.Conv2d(in_channels, width, 3, padding=1))
        channels = width
    if augment:
        layers.append(Augment(augment, dim=-3))
        channels += augment
    return nn.Sequential(*layers), channels


def vector_head(dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(dim, num_classes)


def image_head(channels: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, each shared tensor counted once."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def flat_size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
