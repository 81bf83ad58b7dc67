"""Helpers shared by the analysis modules: splitting a model around its block, per-sample norms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..blocks import Block, ODEBlock, ResidualStack

LossFn = Callable[[Tensor, Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def split_model(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], Block, Callable[[Tensor], Tensor]]:
    """``(stem, block, head)`` of a model: a ``Block`` itself, or a module with a ``block`` (a ``Classifier``).

    A missing ``stem`` or ``head`` is the identity.
    """
    if isinstance(model, Block):
        return _identity, model, _identity
    block = getattr(model, "block", None)
    if isinstance(block, Block):
        stem = getattr(model, "stem", None)
        head = getattr(model, "head", None)
        return stem if stem is not None else _identity, block, head if head is not None else _identity
    raise TypeError(
        f"expected an odenet Block or a model with a .block Block (a Classifier), got {type(model).__name__}"
    )


def check_block(block: Block) -> None:
    if not isinstance(block, (ResidualStack, ODEBlock)):
        raise TypeError(f"expected a ResidualStack or an ODEBlock, got {type(block).__name__}")


def sample_norms(x: Tensor) -> Tensor:
    """The 2-norm of each sample (dimension 0 is the batch), over all its other dimensions; shape ``(B,)``."""
    return x.reshape(x.shape[0], -1).norm(dim=1)


def stack_times(stack: ResidualStack, dtype: torch.dtype = torch.float64) -> Tensor:
    """The times ``t_0 = 0, t_1, ..., t_N = T`` of a stack's states (cumulative step sizes), shape ``(N+1,)``."""
    h = stack.step_sizes.detach().to(dtype)
    return torch.cat([h.new_zeros(1), torch.cumsum(h, 0)])


def time_grid(T: float, times: Tensor | Sequence[float] | int) -> list[float]:
    """Requested output times in ``[0, T]``: an int ``n`` means ``n`` equal intervals of ``[0, T]`` (n+1 times)."""
    if isinstance(times, int) and not isinstance(times, bool):
        if times < 1:
            raise ValueError(f"times must be >= 1 intervals, got {times}")
        grid = torch.linspace(0.0, T, times + 1, dtype=torch.float64)
    else:
        grid = torch.as_tensor(times, dtype=torch.float64)
    if grid.ndim != 1 or len(grid) < 1:
        raise ValueError("times must be an int or a non-empty 1-D sequence of times")
    if bool((grid[1:] <= grid[:-1]).any()) or float(grid[0]) < 0 or float(grid[-1]) > T * (1 + 1e-12):
        raise ValueError(f"times must be increasing and lie in [0, T={T}]")
    # Snap times within rounding of the ends onto them, so no zero-length segment appears.
    return [0.0 if abs(t) <= 1e-12 * T else T if abs(t - T) <= 1e-12 * T else t for t in grid.tolist()]
