"""He et al. (2016)'s staged CIFAR ResNet (Sec. 4.2): depth ``6n + 2``, untied blocks at step size h = 1.

A stem (conv3x3, BN, ReLU) to 16 channels, three stages of ``n`` blocks on 16, 32 and 64 channels (the first block
of stages 2 and 3 has stride 2 and an option-A shortcut: subsampled identity, zero-padded channels), global average
pooling and a linear layer. Every block's branch ``F`` is :class:`BNConvBranch`, conv3x3-BN-ReLU-conv3x3-BN,
He-initialised. With ``shortcut=True`` (ResNet) a block is ``x -> ReLU(x + F(x))`` (the published post-activation
form: the ReLU after the addition makes it *not* an Euler step of a field); with ``shortcut=False`` (plain) it is
``x -> ReLU(F(x))``: the same modules without the addition.

``preact=True`` is He et al.'s later pre-activation block (ECCV 2016): ``F`` = BN-ReLU-conv3x3-BN-ReLU-conv3x3 and
no ReLU after the addition, so each non-transition block *is* the Euler step ``x + 1 * F_k(x)``: a stage's
``n - 1`` same-shape blocks are then an untied :class:`~odenet.stack.ResidualStack` at h = 1
(a :class:`~odenet.fields.DepthIndexedField` over ``[0, n - 1]`` with ``n - 1`` steps), and the head puts BN and
ReLU before the pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._args import check_flag, check_int
from .block_base import Block, State, check_solver_name
from .fields import DepthIndexedField, augment
from .models import Classifier
from .stack import ResidualStack

__all__ = ["BNConvBranch", "HeUnit", "StagedNet", "he_classifier", "option_a_shortcut"]

#: Channels of the three stages (He et al.'s CIFAR-10 net), for ``width=16``.
STAGE_FACTORS = (1, 2, 4)


def he_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 conv without bias (BN follows), He-initialised: ``N(0, 2 / fan_out)`` (``kaiming_normal_``, ReLU)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def option_a_shortcut(x: Tensor, out_channels: int, stride: int) -> Tensor:
    """He et al.'s option A: ``x`` subsampled by ``stride`` and zero-padded to ``out_channels`` (no parameters)."""
    check_int("stride", stride)
    if out_channels < x.shape[-3]:
        raise ValueError(f"option A cannot shrink {x.shape[-3]} channels to {out_channels}")
    if stride > 1:
        x = x[..., ::stride, ::stride]
    return augment(x, out_channels - x.shape[-3], dim=-3)


class BNConvBranch(nn.Module):
    """A block's residual branch ``F(t, x)`` (``t`` is ignored): conv3x3(stride)-BN-ReLU-conv3x3-BN, or with
    ``preact`` BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3. BN starts at gamma = 1, beta = 0."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, preact: bool = False) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            check_int(name, v)
        check_flag("preact", preact)
        self.preact = preact
        conv1, conv2 = he_conv(in_channels, out_channels, stride), he_conv(out_channels, out_channels)
        if preact:
            self.layers = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(), conv1,
                                        nn.BatchNorm2d(out_channels), nn.ReLU(), conv2)
        else:
            self.layers = nn.Sequential(conv1, nn.BatchNorm2d(out_channels), nn.ReLU(),
                                        conv2, nn.BatchNorm2d(out_channels))

    @property
    def last_norm(self) -> nn.BatchNorm2d | None:
        """The branch's last BN (post-activation): a zero gamma there makes ``F = beta`` (0 at init)."""
        last = self.layers[-1]
        return last if isinstance(last, nn.BatchNorm2d) else None

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.layers(x)


class HeUnit(nn.Module):
    """One block: ``F(x) + S(x)`` (``S``: the option-A shortcut; left out when ``shortcut=False``), followed by ReLU
    unless ``preact``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: bool = True,
                 preact: bool = False) -> None:
        super().__init__()
        check_flag("shortcut", shortcut)
        self.branch = BNConvBranch(in_channels, out_channels, stride, preact)
        self.out_channels, self.stride, self.shortcut, self.preact = out_channels, stride, shortcut, preact

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch(0.0, x)
        if self.shortcut:
            y = y + option_a_shortcut(x, self.out_channels, self.stride)
        return y if self.preact else torch.relu(y)


def _stage(in_channels: int, channels: int, n: int, stride: int, shortcut: bool, preact: bool) -> nn.Sequential:
    """The first block (it changes shape when ``stride > 1``), then ``n - 1`` same-shape blocks: HeUnits, or with
    ``preact`` one untied ResidualStack at h = 1 (``T = steps = n - 1``)."""
    first = HeUnit(in_channels, channels, stride, shortcut, preact)
    if n == 1:
        return nn.Sequential(first)
    if preact:
        field = DepthIndexedField(lambda: BNConvBranch(channels, channels, 1, True), n - 1, T=float(n - 1))
        return nn.Sequential(first, ResidualStack(field, steps=n - 1, T=float(n - 1), shortcut=shortcut))
    return nn.Sequential(first, *(HeUnit(channels, channels, 1, shortcut, preact) for _ in range(n - 1)))


class StagedNet(Block):
    """The three stages of ``n`` blocks each (``steps = 3 n`` blocks, h = 1, ``T = 3 n``), as a ``Block``.

    Its "field" is the module list of the stages (every parameter of the body); it integrates nothing else:
    ``with_solver`` accepts only its own Euler grid (``steps = 3 n``), ``trajectory`` is refused (the stages'
    states differ in shape).
    """

    scheme = "euler"

    def __init__(self, n: int, width: int = 16, shortcut: bool = True, preact: bool = False) -> None:
        super().__init__()
        check_int("n", n)
        check_int("width", width)
        check_flag("shortcut", shortcut)
        check_flag("preact", preact)
        self._init_regularizers((), "gaussian")
        stages, channels = [], width
        for i, factor in enumerate(STAGE_FACTORS):
            stages.append(_stage(channels, width * factor, n, 1 if i == 0 else 2, shortcut, preact))
            channels = width * factor
        self.field = nn.ModuleList(stages)
        self.n, self.width, self.shortcut, self.preact = n, width, shortcut, preact
        self.steps, self.T, self.out_channels = 3 * n, float(3 * n), channels
        self._nfe = 0

    @property
    def depth(self) -> int:
        """He et al.'s depth: ``6 n + 2`` weighted layers (two convs per block, the stem conv, the linear layer)."""
        return 6 * self.n + 2

    @property
    def nfe(self) -> int:
        return self._nfe

    @property
    def stats(self) -> dict[str, int]:
        return {"nfe": self._nfe, "nfe_backward": 0, "steps": self.steps}

    def extra_repr(self) -> str:
        kind = ("residual" if self.shortcut else "plain") + (", preact" if self.preact else "")
        return f"n={self.n}, depth={self.depth}, {kind}"

    def forward(self, x: State) -> State:
        if not isinstance(x, Tensor):
            raise TypeError(f"StagedNet takes an image batch (a tensor), got {type(x).__name__}")
        for stage in self.field:
            x = stage(x)
        self._nfe = self.steps
        return x

    def trajectory(self, x: State, times: Any = None) -> State:
        raise ValueError("a StagedNet's states change shape between stages: it has no trajectory to stack")

    def with_solver(self, solver: str, **options: Any) -> Block:
        check_solver_name(solver)
        if solver != "euler" or set(options) - {"steps"} or options.get("steps", self.steps) != self.steps:
            raise ValueError(f"a StagedNet is He et al.'s fixed net ({self.steps} blocks at h = 1): it has no "
                             f"{solver!r} integration {options or ''}; only with_solver('euler', steps={self.steps})")
        return self


def he_stem(in_channels: int, width: int = 16) -> nn.Sequential:
    """conv3x3 (He-initialised, no bias) to ``width`` channels, BN, ReLU."""
    check_int("in_channels", in_channels)
    return nn.Sequential(he_conv(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())


def he_head(channels: int, num_classes: int, preact: bool = False) -> nn.Sequential:
    """Global average pooling and a linear layer (PyTorch's default init); ``preact``: BN and ReLU first."""
    check_int("num_classes", num_classes)
    norm: list[nn.Module] = [nn.BatchNorm2d(channels), nn.ReLU()] if preact else []
    return nn.Sequential(*norm, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def he_classifier(in_channels: int, num_classes: int, n: int, width: int = 16, shortcut: bool = True,
                  preact: bool = False) -> Classifier:
    """He et al.'s CIFAR net of depth ``6 n + 2`` (ResNet with ``shortcut``, else plain) as a ``Classifier``:
    ``he_classifier(3, 10, 3)`` is ResNet-20 (269,722 parameters)."""
    block = StagedNet(n, width, shortcut, preact)
    return Classifier(he_stem(in_channels, width), block, he_head(block.out_channels, num_classes, preact))
