"""Growing a trained ``ResidualStack``: insert steps into a depth-indexed (untied) stack, or refine a grid.

Nested function classes (He et al. 2016's "constructed solution"): a residual step ``x + h F_k(x)`` whose field's
last layer is zero is the identity, so a deeper untied ResNet holds the shallower one exactly
(:func:`insert_steps` with ``init="identity"``). A plain step ``x <- F_k(x)`` with the same zeroed layer maps every
input to a constant: the plain net's inserted layer cannot be the identity. In the ODE view, more steps of a tied
field on the same ``[0, T]`` refine the Euler grid (:func:`refine_grid`): the function changes by about half the
coarse grid's discretisation error (:func:`refinement_errors`).

Every function returns a new stack and leaves its input untouched (its parameters are copied unless ``share``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._args import ArgumentTypeError, check_int
from .fields import ConvField, DepthIndexedField, LinearField, MLPField
from .stack import ResidualStack

__all__ = [
    "INSERT_INITS",
    "fresh_copy",
    "insert_steps",
    "last_layer",
    "refine_grid",
    "refinement_errors",
    "spread_positions",
    "zero_last_layer",
]

#: how :func:`insert_steps` initialises an inserted layer
INSERT_INITS = ("identity", "default")


def last_layer(field: nn.Module) -> nn.Module:
    """The layer whose output is the field's output (zeroing it makes ``F = 0``): a TypeError for other fields."""
    if isinstance(field, MLPField):
        return field.linears[-1]
    if isinstance(field, LinearField):
        return field.linear
    if isinstance(field, ConvField) and all(isinstance(n, nn.Identity) for n in field.norms):
        return field.convs[-1]
    raise TypeError(
        f"cannot find the last layer of a {type(field).__name__}: an MLPField, a LinearField or a ConvField without "
        "group norm (whose last conv alone gives the output)"
    )


def zero_last_layer(field: nn.Module) -> nn.Module:
    """``field`` with its last layer's weight (and bias) set to zero, in place: then ``F(t, x) = 0`` exactly."""
    layer = last_layer(field)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    return field


def fresh_copy(field: nn.Module) -> nn.Module:
    """A copy of ``field`` with every submodule's ``reset_parameters()`` called (PyTorch's default init, drawn
    from the global torch generator)."""
    out = copy.deepcopy(field)
    for module in out.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return out


def spread_positions(steps: int, n: int) -> list[int]:
    """``n`` insertion positions spread over a stack of ``steps`` steps: ``ceil((i + 1) steps / (n + 1))``.

    ``n = steps`` gives ``[1, 2, ..., steps]`` (one new step after each old one); ``n = 1`` the middle.
    """
    check_int("steps", steps, low=1)
    check_int("n", n, low=1)
    return [math.ceil((i + 1) * steps / (n + 1)) for i in range(n)]


def _check_stack(stack: ResidualStack) -> None:
    if not isinstance(stack, ResidualStack):
        raise ArgumentTypeError(f"stack must be a ResidualStack, got {type(stack).__name__}")
    if stack.learn_steps:
        raise ValueError("a stack with learned steps (learn_steps=True) has no fixed grid to grow: use a uniform one")


def insert_steps(stack: ResidualStack, positions: Sequence[int], init: str = "identity",
                 share: bool = False) -> ResidualStack:
    """A copy of the untied ``stack`` with one new step before each old step index in ``positions``.

    ``stack.field`` must be a ``DepthIndexedField`` with one layer per step, integrated by Euler. ``positions``
    holds old step indices in ``0..steps`` (``steps``: after the last step; repeats insert several). The step
    size is kept: the new stack has ``steps + n`` steps on ``[0, T (steps + n) / steps]``. A new layer is a copy
    of its neighbour (the old layer it precedes, or the last) initialised by ``init``: ``identity`` zeroes its
    last layer (``F_k = 0``: a residual step is then the identity, a plain step the constant 0), ``default``
    redraws every parameter (PyTorch's default init). ``share=True`` reuses the old layers themselves (as
    ``with_solver`` shares a field: training the result trains them), else they are copied.
    """
    _check_stack(stack)
    field = stack.field
    if not isinstance(field, DepthIndexedField) or field.depth != stack.steps:
        raise ValueError(
            "insert_steps needs an untied stack: a DepthIndexedField with one layer per step (field.untied); "
            "for a tied field, refine the grid (refine_grid)"
        )
    if stack.scheme != "euler":
        raise ValueError(f"insert_steps needs scheme='euler' (one field evaluation per step), not {stack.scheme!r}")
    if init not in INSERT_INITS:
        raise ValueError(f"unknown init {init!r}; init must be one of {list(INSERT_INITS)}")
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence) or not positions:
        raise ArgumentTypeError(f"positions must be a non-empty sequence of step indices, got {positions!r}")
    for p in positions:
        if check_int("positions[i]", p, low=0) > stack.steps:
            raise ValueError(f"positions must be step indices in 0..{stack.steps}, got {list(positions)}")
    steps, old = stack.steps, list(field.layers)
    new_layers: list[nn.Module] = []
    for k in range(steps + 1):
        for _ in range(list(positions).count(k)):
            template = old[min(k, steps - 1)]
            new_layers.append(zero_last_layer(copy.deepcopy(template)) if init == "identity" else fresh_copy(template))
        if k < steps:
            new_layers.append(old[k] if share else copy.deepcopy(old[k]))
    total = len(new_layers)
    T = stack.T * total / steps
    layers = iter(new_layers)
    grown = DepthIndexedField(lambda: next(layers), total, T)
    out = ResidualStack(grown, steps=total, T=T, scheme="euler", shortcut=stack.shortcut,
                        regularizers=stack.regularizers, noise=stack.noise)
    out.train(stack.training)
    return out


def refine_grid(stack: ResidualStack, factor: int = 2, share: bool = False) -> ResidualStack:
    """A copy of the residual ``stack`` with ``factor`` times as many steps on the same ``[0, T]`` (h / factor).

    The field is copied unchanged (tied, or depth-indexed: a layer then covers ``factor`` steps); ``share=True``
    reuses the field object itself.
    """
    _check_stack(stack)
    check_int("factor", factor, low=1)
    if not stack.shortcut:
        raise ValueError("refine_grid needs a residual stack (shortcut=True): a plain net has no step size to refine")
    field = stack.field if share else copy.deepcopy(stack.field)
    out = ResidualStack(field, steps=stack.steps * factor, T=stack.T, scheme=stack.scheme,
                        regularizers=stack.regularizers, noise=stack.noise)
    out.train(stack.training)
    return out


def _row_norm_mean(x: Tensor) -> float:
    return float(x.reshape(len(x), -1).norm(dim=1).mean())


@torch.no_grad()
def refinement_errors(coarse: ResidualStack, fine: ResidualStack, x: Tensor, rtol: float = 1e-8,
                      atol: float = 1e-10) -> dict[str, float]:
    """How refining the grid changes a stack's output, against the exact flow of its field.

    On the states ``x`` (rows), with means of row norms: ``change = |fine(x) - coarse(x)|``; ``error_coarse``
    and ``error_fine``, each grid's distance from the flow of the same field solved by dopri5 in float64 at
    ``rtol``/``atol``; ``scale = |coarse(x)|``. Euler's error is ``C h + O(h^2)``, so halving h gives
    ``change ~ error_coarse / 2 ~ error_fine``.
    """
    if not (coarse.shortcut and fine.shortcut):
        raise ValueError("refinement_errors compares residual stacks: a plain net has no flow")
    modes = coarse.training, fine.training
    a, b = coarse.eval()(x), fine.eval()(x)
    coarse.train(modes[0])
    fine.train(modes[1])
    exact = copy.deepcopy(coarse).double().with_solver("dopri5", rtol=rtol, atol=atol)
    ref = exact.eval()(x.double())
    return {
        "change": _row_norm_mean(b - a),
        "error_coarse": _row_norm_mean(a.double() - ref),
        "error_fine": _row_norm_mean(b.double() - ref),
        "scale": _row_norm_mean(a),
    }
