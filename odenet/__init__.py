"""odenet: residual networks and neural ODEs on one vector field.

A residual block ``x + h F(t, x)`` is one Euler step of ``dx/dt = F(t, x)``; odenet lets the
same field be integrated as a discrete ResNet, a plain net, a learned-step stack or a
torchdiffeq ODE block, and swapped between them without retraining.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names resolve on first use (PEP 562), so that importing a subpackage (the runner's config, say) does not load
# torch before it is needed; ``from odenet import ResidualStack`` works as always.
_EXPORTS = {
    "Block": "blocks", "NonFiniteStateError": "blocks", "ODEBlock": "blocks", "ResidualStack": "blocks",
    "SolverError": "blocks", "make_block": "blocks", "raised_by_field": "blocks",
    "Augment": "fields", "ConvField": "fields", "DepthIndexedField": "fields", "LinearField": "fields",
    "MLPField": "fields", "augment": "fields", "Integrator": "integrator", "with_solver": "models",
    "RegularizedDynamics": "regularization", "SCHEMES": "solvers", "ButcherTableau": "solvers",
    "register_scheme": "solvers",
}

if TYPE_CHECKING:
    from .blocks import Block, NonFiniteStateError, ODEBlock, ResidualStack, SolverError, make_block, raised_by_field
    from .fields import Augment, ConvField, DepthIndexedField, LinearField, MLPField, augment
    from .integrator import Integrator
    from .models import with_solver
    from .regularization import RegularizedDynamics
    from .solvers import SCHEMES, ButcherTableau, register_scheme


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        importlib.import_module(f"{__name__}.blocks")  # every block kind registered before any is made
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "Augment",
    "Block",
    "ButcherTableau",
    "ConvField",
    "DepthIndexedField",
    "Integrator",
    "LinearField",
    "MLPField",
    "NonFiniteStateError",
    "ODEBlock",
    "RegularizedDynamics",
    "ResidualStack",
    "SCHEMES",
    "SolverError",
    "augment",
    "make_block",
    "raised_by_field",
    "register_scheme",
    "with_solver",
]
__version__ = "0.1.0"
