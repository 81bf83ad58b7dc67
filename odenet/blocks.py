"""The blocks users import: a discrete ResNet (``ResidualStack``) and a torchdiffeq ``ODEBlock``.

Both integrate the same field ``F(t, x)`` on ``[0, T]``; ``with_solver`` re-makes a block around
the very same field object, so a trained model can be evaluated under another integrator. The abstract
``Block``, ``make_block`` and the shared checks live in :mod:`odenet.block_base`, the blocks in
:mod:`odenet.stack` and :mod:`odenet.odeblock`; every name is importable from here.
"""

from __future__ import annotations

from .block_base import Block, NonFiniteStateError, SolverError, make_block, raised_by_field
from .odeblock import ODEBlock
from .stack import ResidualStack

__all__ = [
    "Block",
    "NonFiniteStateError",
    "ODEBlock",
    "ResidualStack",
    "SolverError",
    "make_block",
    "raised_by_field",
]
