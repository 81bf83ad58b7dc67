"""Vector fields ``F(t, x) -> dx/dt``: the one module every block integrates.

Any ``nn.Module`` whose ``forward(t, x)`` returns a tensor shaped like ``x`` is a field; the
classes here are the ones the experiments use. ``t`` arrives as a 0-dim tensor (or a number).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from ._args import ArgumentTypeError, check_flag, check_int, check_number

TimeMode = Literal["none", "concat"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}
TIME_MODES = ("none", "concat")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name; a ValueError lists the valid names otherwise."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"activation must be a name among {sorted(ACTIVATIONS)}, got {name!r}")
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; activation must be one of {sorted(ACTIVATIONS)}") from None


def _check_time_mode(time: str) -> None:
    if not isinstance(time, str):
        raise ArgumentTypeError(f"time must be one of {list(TIME_MODES)}, got {time!r} ({type(time).__name__})")
    if time not in TIME_MODES:
        raise ValueError(f"unknown time conditioning {time!r}; time must be one of {list(TIME_MODES)}")


def _check_positive_int(name: str, value: int) -> None:
    check_int(name, value, low=1)


def _time_like(t: Tensor | float, x: Tensor, dim: int) -> Tensor:
    """``t`` broadcast to ``x``'s shape with size 1 along ``dim``."""
    shape = list(x.shape)
    shape[dim] = 1
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(shape)


class MLPField(nn.Module):
    """A fully connected field on states ``(..., dim)``.

    ``depth`` hidden layers of ``hidden`` units; with ``time="concat"`` the time is appended
    to the input of every linear layer (a non-autonomous field).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 32,
        depth: int = 2,
        activation: str = "tanh",
        time: TimeMode = "none",
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            _check_positive_int(name, value)
        _check_time_mode(time)
        self.dim, self.time = dim, time
        extra = 1 if time == "concat" else 0
        widths = [dim] + [hidden] * depth + [dim]
        self.linears = nn.ModuleList(nn.Linear(w_in + extra, w_out) for w_in, w_out in zip(widths, widths[1:]))
        self.act = make_activation(activation)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            if self.time == "concat":
                x = torch.cat([x, _time_like(t, x, -1)], dim=-1)
            x = linear(x)
            if i < last:
                x = self.act(x)
        return x


class LinearField(nn.Module):
    """``F(t, x) = x W^T`` (no bias): with ``DepthIndexedField`` and Euler, Sander et al.'s linear ResNet
    ``x_{k+1} = x_k + W_k x_k / L``. ``zero_init`` starts from ``W = 0`` (Sander et al.'s initialisation)."""

    def __init__(self, dim: int, zero_init: bool = False) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        check_flag("zero_init", zero_init)
        self.linear = nn.Linear(dim, dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.linear.weight)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.linear(x)


class ConvField(nn.Module):
    """A convolutional field on image states ``(..., channels, H, W)`` that keeps the shape.

    ``depth`` convolutions of ``kernel`` (odd) with ``hidden`` channels in between, each
    optionally followed by GroupNorm (``groups`` groups); ``time="concat"`` adds t as an
    extra input channel to every convolution. ``preact=True`` puts a norm and the activation
    before the first convolution: with ``depth=2``, GroupNorm and ReLU this is Chen et al.'s
    ODE-Net field (norm, ReLU, conv, norm, ReLU, conv, norm).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        depth: int = 2,
        kernel: int = 3,
        activation: str = "relu",
        time: TimeMode = "concat",
        groupnorm: bool = False,
        groups: int = 8,
        preact: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("hidden", hidden), ("depth", depth), ("groups", groups)):
            _check_positive_int(name, value)
        check_int("kernel", kernel, low=1)
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be a positive odd integer (shape-preserving padding), got {kernel!r}")
        _check_time_mode(time)
        check_flag("groupnorm", groupnorm)
        check_flag("preact", preact)
        self.channels, self.time = channels, time
        extra = 1 if time == "concat" else 0
        widths = [channels] + [hidden] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in + extra, c_out, kernel, padding=kernel // 2) for c_in, c_out in zip(widths, widths[1:])
        )
        if groupnorm:
            for w in widths[1:]:
                if w % min(groups, w):
                    raise ValueError(f"groups={groups} must divide every conv width {widths[1:]}")
            self.norms = nn.ModuleList(nn.GroupNorm(min(groups, w), w) for w in widths[1:])
        else:
            self.norms = nn.ModuleList(nn.Identity() for _ in widths[1:])
        self.act = make_activation(activation)
        self.preact = preact
        if preact:  # its own attribute, so the state_dict keys of preact=False stay as they were
            if groupnorm and channels % min(groups, channels):
                raise ValueError(f"groups={groups} must divide the state's {channels} channels (preact norm)")
            self.pre_norm = nn.GroupNorm(min(groups, channels), channels) if groupnorm else nn.Identity()

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        batch_shape = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:])
        if self.preact:
            x = self.act(self.pre_norm(x))
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if self.time == "concat":
                x = torch.cat([x, _time_like(t, x, -3)], dim=-3)
            x = norm(conv(x))
            if i < last:
                x = self.act(x)
        return x.reshape(*batch_shape, *x.shape[-3:])


class Conv1dField(nn.Module):
    """Ott et al. (ICLR 2021)'s Sphere2 field: the state ``(..., dim)`` read as one channel of length ``dim``.

    ``Conv1d(1, hidden, 1)``, activation, ``Conv1d(hidden, hidden, kernel, padding=kernel // 2)``, activation,
    ``Conv1d(hidden, 1, 1)`` (their ``SimpleResidualBlock``); autonomous (no time input). The middle convolution
    mixes neighbouring coordinates, zero-padded at both ends. Parameters: ``hidden`` + ``hidden`` (first),
    ``hidden² kernel + hidden`` (middle), ``hidden + 1`` (last): 3201 for ``hidden=32, kernel=3``.
    """

    def __init__(self, dim: int, hidden: int = 32, kernel: int = 3, activation: str = "relu") -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("kernel", kernel)):
            _check_positive_int(name, value)
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be a positive odd integer (shape-preserving padding), got {kernel!r}")
        self.dim = dim
        self.convs = nn.ModuleList([
            nn.Conv1d(1, hidden, 1), nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2), nn.Conv1d(hidden, 1, 1),
        ])
        self.act = make_activation(activation)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        # The convolutions' own weights applied as matrix products over a (..., length, channels) layout: the same
        # map as the modules' forward (tests/library/test_ott_library.py), about 2x faster on CPU for these tiny
        # tensors. The middle convolution is one product of the k-shifted windows, concatenated, with its weight.
        first, middle, last = self.convs
        length, kernel = x.shape[-1], middle.kernel_size[0]
        pad = kernel // 2
        h = self.act(x[..., None] * first.weight[:, 0, 0] + first.bias)  # (..., length, hidden)
        hp = torch.nn.functional.pad(h, (0, 0, pad, pad))  # zeros at both ends of the length axis
        windows = torch.cat([hp[..., k:k + length, :] for k in range(kernel)], dim=-1)  # (..., length, kernel hidden)
        weight = middle.weight.permute(0, 2, 1).reshape(middle.weight.shape[0], -1)  # the same k-major order
        h = self.act(torch.nn.functional.linear(windows, weight, middle.bias))
        return torch.nn.functional.linear(h, last.weight[:, :, 0]).squeeze(-1) + last.bias


def kaiming_init(module: nn.Module) -> None:
    """Ott et al.'s ``init_weights(init_type="kaiming")``: every ``Conv*`` / ``Linear`` weight in ``module`` drawn
    from ``N(0, 2 / fan_in)`` (``kaiming_normal_``, ``a=0``, ``mode="fan_in"``), every bias zero."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DepthIndexedField(nn.Module):
    """One weight set per depth slice: an untied ResNet seen as a non-autonomous ODE.

    Holds ``depth`` fields built by ``make_field()``; at time ``t`` it evaluates field
    ``k = floor(t depth / T)`` (right-continuous, clamped to ``[0, depth-1]``), so the weights
    are piecewise constant in ``t``. Integrated by ``ResidualStack(field, steps=depth)`` with
    Euler it is exactly an untied ResNet of ``depth`` blocks.
    """

    def __init__(self, make_field: Callable[[], nn.Module], depth: int, T: float = 1.0) -> None:
        super().__init__()
        if isinstance(make_field, nn.Module):
            raise TypeError(
                f"make_field must be a function returning a fresh field (one per layer), not the field "
                f"{type(make_field).__name__} itself: pass lambda: {type(make_field).__name__}(...)"
            )
        if not callable(make_field):
            raise TypeError(f"make_field must be a callable returning a fresh field, got {type(make_field).__name__}")
        _check_positive_int("depth", depth)
        self.depth, self.T = depth, check_number("T", T, low=0.0, low_open=True)
        layers = [make_field() for _ in range(depth)]
        for layer in layers:
            if not isinstance(layer, nn.Module):
                raise TypeError(f"make_field must return an nn.Module field, got {type(layer).__name__}")
        self.layers = nn.ModuleList(layers)

    def index(self, t: Tensor | float) -> int:
        """The layer used at time ``t``."""
        # The tolerance puts a grid time k*T/depth rounded just below its boundary on layer k; it scales
        # with the precision of t (a float32 grid time can sit ~1 ulp, far more than 1e-9, below k).
        s = float(t) * self.depth / self.T
        eps = torch.finfo(t.dtype).eps if isinstance(t, Tensor) and t.is_floating_point() else 0.0
        k = int(s + 1e-9 + 4 * eps * abs(s))
        return min(max(k, 0), self.depth - 1)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.layers[self.index(t)](t, x)


def _check_extra_dim(extra: int, dim: int) -> None:
    check_int("extra", extra, low=0)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ArgumentTypeError(f"dim must be an integer (the axis to pad), got {dim!r} ({type(dim).__name__})")


def augment(x: Tensor, extra: int, dim: int = -1) -> Tensor:
    """Append ``extra`` zeros to ``x`` along ``dim`` (ANODE's augmented state)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    _check_extra_dim(extra, dim)
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim={dim} is out of range for a state of shape {tuple(x.shape)}")
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class Augment(nn.Module):
    """Zero-pads the state with ``extra`` dimensions along ``dim`` (ANODE, Dupont et al. 2019).

    Use it before a block whose field is built on ``dim + extra`` features (or channels, with
    ``dim=-3`` for images).
    """

    def __init__(self, extra: int, dim: int = -1) -> None:
        super().__init__()
        _check_extra_dim(extra, dim)
        self.extra, self.dim = extra, dim

    def forward(self, x: Tensor) -> Tensor:
        return augment(x, self.extra, self.dim)

    def extra_repr(self) -> str:
        return f"extra={self.extra}, dim={self.dim}"
