"""odenet: residual networks and neural ODEs on one vector field.

A residual block ``x + h F(t, x)`` is one Euler step of ``dx/dt = F(t, x)``; odenet lets the
same field be integrated as a discrete ResNet, a plain net, a learned-step stack or a
torchdiffeq ODE block, and swapped between them without retraining.
"""

from .blocks import Block, NonFiniteStateError, ODEBlock, ResidualStack, SolverError, make_block, raised_by_field
from .fields import Augment, ConvField, DepthIndexedField, LinearField, MLPField, augment
from .integrator import Integrator
from .models import with_solver
from .regularization import RegularizedDynamics
from .solvers import SCHEMES, ButcherTableau, register_scheme

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
