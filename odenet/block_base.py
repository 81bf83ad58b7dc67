"""What every block shares: the abstract ``Block``, ``SolverError`` and the checks of a block's inputs.

``Block`` is abstract (``abc.ABC``): it holds what is common to every block (a field, a horizon ``T``, the
regularisers and their recorded integrals, ``integrator``) and declares what each concrete block must
give (``forward``, ``trajectory``, ``nfe``, ``stats``, ``with_solver``). The concrete blocks,
:class:`~odenet.stack.ResidualStack` and :class:`~odenet.odeblock.ODEBlock`, are final: extend odenet with
a new block by subclassing ``Block``, not a concrete block.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._args import ArgumentTypeError, check_number
from .fields import DepthIndexedField
from .integrator import Integrator
from .regularization import RegularizedDynamics, check_regularizers
from .solvers import ADAPTIVE_SOLVERS, SCHEMES, TORCHDIFFEQ_FIXED

__all__ = ["BLOCK_CLASSES", "Block", "NonFiniteStateError", "SolverError", "State", "make_block", "raised_by_field"]

#: A vector field as the solvers call it.
FieldFn = Callable[[Tensor, Tensor], Tensor]

#: Options only an ``ODEBlock`` (torchdiffeq) takes: any of them sends a fixed scheme to an ``ODEBlock``.
ODE_ONLY_OPTIONS = frozenset(
    {"rtol", "atol", "adjoint", "step_size", "max_steps", "min_step", "max_step", "penalty_error_control",
     "options", "adjoint_params", "adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options", "backend"}
)

#: A block's state: a tensor, or a tuple of tensors (as torchdiffeq's ``odeint`` takes).
State = Tensor | tuple[Tensor, ...]


class SolverError(RuntimeError):
    """An integration that torchdiffeq could not finish: step-size underflow, too many steps, a non-finite state."""


class NonFiniteStateError(ValueError):
    """A block was given an initial state with NaN or infinite entries."""


_FIELD_MARK = "_odenet_raised_by_field"


def mark_field_error(err: BaseException) -> None:
    """Mark ``err`` as raised by the user's field (so no solver wrapper turns it into a ``SolverError``)."""
    try:
        setattr(err, _FIELD_MARK, True)
    except (AttributeError, TypeError):  # an exception type without attributes: left unmarked
        pass


def raised_by_field(err: BaseException) -> bool:
    """Whether ``err`` was raised inside a block's vector field (the user's code) rather than by the solver.

    Blocks re-raise such exceptions unchanged; use this where an ``AssertionError`` from a backward pass
    (an adjoint solve) is turned into a ``SolverError``, to let the field's own exceptions through.
    """
    return bool(getattr(err, _FIELD_MARK, False))


def check_field(field: Any, T: float) -> None:
    """``field`` is a module; a ``DepthIndexedField`` shares the block's horizon ``T``."""
    if not isinstance(field, nn.Module):
        raise TypeError(f"field must be an nn.Module with forward(t, x) -> dx/dt, got {type(field).__name__}")
    if isinstance(field, DepthIndexedField) and not math.isclose(field.T, T, rel_tol=1e-12, abs_tol=0.0):
        raise ValueError(
            f"the DepthIndexedField's horizon T={field.T:g} differs from the block's T={T:g}: its layer k covers "
            f"[k T / depth, (k + 1) T / depth], so give the field and the block the same T"
        )


def check_T(T: Any) -> float:
    """The horizon as a positive float. A one-element real tensor is read as its value (``T`` is kept as a
    float, not a tensor: a ``T`` that requires grad is refused, since its gradient would be lost)."""
    if isinstance(T, Tensor):
        if T.numel() != 1 or T.dtype == torch.bool or T.is_complex():
            raise ArgumentTypeError(f"T must be a number or a one-element real tensor, got a {T.dtype} tensor "
                                    f"of shape {tuple(T.shape)}")
        if T.requires_grad:
            raise ValueError(
                "T must not require grad: a block keeps its horizon as a float, so the gradient would be lost; "
                "for gradients with respect to time, give ODEBlock.trajectory a times tensor that requires grad"
            )
        T = T.item()
    return check_number("T", T, low=0.0, low_open=True)


def check_solver_name(solver: Any) -> str:
    if not isinstance(solver, str):
        raise ArgumentTypeError(
            f"solver must be a name among {sorted(set(SCHEMES) | set(ADAPTIVE_SOLVERS) | set(TORCHDIFFEQ_FIXED))}, "
            f"got {solver!r} ({type(solver).__name__})"
        )
    return solver


def _functorch_wrapped(x: Tensor) -> bool:
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(x)) if check is not None else False


def _check_tensor_state(x: Any, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} (the initial state) must be a tensor or a tuple of tensors, got {type(x).__name__}")
    if torch.compiler.is_compiling() or _functorch_wrapped(x):
        return
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteStateError(
            f"the initial state {name} is not finite ({bad} NaN or infinite entries of {x.numel()}): "
            "check the input and the layers before the block"
        )


def check_state(x: Any) -> None:
    """The initial state is a tensor, or a non-empty tuple of tensors of one dtype and device, with finite
    entries (one ``isfinite().all()`` per tensor).

    Skipped where values cannot be read: under ``torch.func`` transforms (``vmap``, ``grad``) and while
    ``torch.compile`` traces.
    """
    if not isinstance(x, tuple):
        _check_tensor_state(x, "x")
        return
    if not x:
        raise ValueError("x (the initial state) is an empty tuple: a tuple state holds one tensor or more")
    for i, xi in enumerate(x):
        _check_tensor_state(xi, f"x[{i}]")
    if len({(xi.dtype, xi.device) for xi in x}) > 1:
        raise ValueError(
            "the tensors of a tuple state must share one dtype and device, got "
            f"{[(str(xi.dtype), str(xi.device)) for xi in x]}"
        )


def shape_error(out: Tensor, x: Tensor, name: str = "x") -> ValueError:
    return ValueError(
        f"the field returned shape {tuple(out.shape)} for a state {name} of shape {tuple(x.shape)}; "
        f"a vector field must return dx/dt shaped like {name}"
    )


def call_field(field: Any, t: Tensor, x: Any) -> Any:
    """``field(t, x)``, its own exceptions marked (``raised_by_field``) and its output's shape checked."""
    try:
        out = field(t, x)
    except Exception as err:
        mark_field_error(err)
        raise
    check_output(out, x)
    return out


def check_output(out: Any, x: State) -> None:
    """The field's output ``out`` is shaped like the state ``x`` (per tensor for a tuple state)."""
    if not isinstance(x, tuple):
        if out.shape != x.shape:
            raise shape_error(out, x)
        return
    if not isinstance(out, (tuple, list)) or len(out) != len(x):
        got = f"a {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
        raise ValueError(
            f"the field returned {got} for a tuple state of {len(x)} tensors; a vector field of a tuple "
            "state must return a tuple of as many tensors, each shaped like its part of the state"
        )
    for i, (o, xi) in enumerate(zip(out, x)):
        if not isinstance(o, Tensor):
            raise TypeError(f"the field returned a {type(o).__name__} for the state x[{i}]; it must be a tensor")
        if o.shape != xi.shape:
            raise shape_error(o, xi, f"x[{i}]")


def numel(x: State) -> int:
    """Entries of a state (of every tensor of a tuple state)."""
    return sum(xi.numel() for xi in x) if isinstance(x, tuple) else x.numel()


def state_dtype(x: State) -> torch.dtype:
    return (x[0] if isinstance(x, tuple) else x).dtype


def state_device(x: State) -> torch.device:
    return (x[0] if isinstance(x, tuple) else x).device


class ShapeChecked:
    """Calls ``field`` and checks that every output has its input's shape (one shape compare per call);
    marks the field's own exceptions (see ``raised_by_field``)."""

    def __init__(self, field: FieldFn) -> None:
        self.field = field

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        return call_field(self.field, t, x)


class FlatTupleField:
    """A field of a tuple state as one on the flat concatenation of its tensors (the state's entries in order),
    what a ResidualStack steps; checks the output's shapes and marks the field's own exceptions."""

    def __init__(self, field: FieldFn, x: tuple[Tensor, ...]) -> None:
        self.field = field
        self.shapes = [xi.shape for xi in x]

    def flatten(self, x: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        return torch.cat([xi.reshape(-1) for xi in x])

    def unflatten(self, flat: Tensor) -> tuple[Tensor, ...]:
        """The tuple state of a flat state, or of flat states stacked along a leading dimension."""
        lead = flat.shape[:-1]
        out, start = [], 0
        for shape in self.shapes:
            n = shape.numel()
            out.append(flat[..., start:start + n].reshape(*lead, *shape))
            start += n
        return tuple(out)

    def __call__(self, t: Tensor, flat: Tensor) -> Tensor:
        return self.flatten(call_field(self.field, t, self.unflatten(flat)))


def wants_stack(solver: str, options: dict[str, Any]) -> bool:
    """A fixed scheme without torchdiffeq-only options is integrated by a ResidualStack."""
    return solver in SCHEMES and not (set(options) & ODE_ONLY_OPTIONS)


class Block(nn.Module, ABC):
    """What every block shares: a field, a horizon ``T``, solver statistics and ``with_solver``.

    Abstract: ``forward``, ``trajectory``, ``nfe``, ``stats`` and ``with_solver`` are each concrete block's.
    """

    field: nn.Module
    T: float
    regularizers: tuple[str, ...] = ()
    noise: str = "gaussian"
    #: Whether ``compile()`` can compile this block's whole solve (see ``compile``).
    compilable: bool = False
    _compile_options: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``torch.compile`` this block's whole solve in place (``nn.Module.compile``: the ``state_dict`` keys stay,
        so checkpoints load into eager blocks); ``args``/``kwargs`` go to ``torch.compile``. Blocks made from it
        by ``with_solver`` are compiled alike (one graph per solver, mode, grad mode and input shape, each compiled
        once).

        A ``ResidualStack`` compiles (its loop unrolls into one graph); an ``ODEBlock`` does not: torchdiffeq's
        step-size control branches on tensor values at every step (a TypeError; compile its field instead,
        ``block.field.compile()``).
        """
        if not self.compilable:
            raise TypeError(
                f"{type(self).__name__} cannot be compiled whole: torchdiffeq's solver loop branches on tensor "
                "values (step-size control); compile its field instead (block.field.compile()), or use a "
                "ResidualStack"
            )
        super().compile(*args, **kwargs)
        self._compile_options = (args, kwargs)

    @property
    def compiled(self) -> bool:
        """Whether ``compile()`` has compiled this block's solve."""
        return self._compile_options is not None

    def _init_regularizers(self, regularizers: Sequence[str], noise: str) -> None:
        self.regularizers = check_regularizers(regularizers, noise)
        self.noise = noise
        self._regularization: dict[str, Tensor] = {}

    def _dynamics(self) -> RegularizedDynamics | None:
        """The augmented dynamics when penalties are integrated: regularizers set, training, grad enabled."""
        if self.regularizers and self.training and torch.is_grad_enabled():
            return RegularizedDynamics(self.field, self.regularizers, self.noise)
        return None

    def _record_regularization(self, integrals: dict[str, Tensor] | None) -> None:
        # The batch mean; an empty batch has no samples to average: its penalties are 0.
        self._regularization = (
            {k: v.mean() if v.numel() else v.sum() for k, v in integrals.items()} if integrals else {}
        )

    @property
    def regularization(self) -> dict[str, Tensor]:
        """The penalties of the last training forward, batch means of per-sample integrals over ``[0, T]``.

        ``kinetic``: ``int ||F(t, x)||^2 dt``; ``jacobian``: the Hutchinson estimate of
        ``int ||dF/dx||_F^2 dt``. Computed only in training mode with gradients enabled (empty otherwise);
        differentiable, to be added to the loss with their weights.
        """
        return self._regularization

    @property
    def integrator(self) -> Integrator:
        """The block's integrator identity (solver name; steps, step size or tolerances; adjoint)."""
        return Integrator.of(self)

    @property
    @abstractmethod
    def nfe(self) -> int:
        """Field evaluations of the last forward (or trajectory) call."""

    @property
    def nfe_backward(self) -> int:
        """Field evaluations of the backward pass after the last forward (0 unless adjoint)."""
        return 0

    @property
    @abstractmethod
    def stats(self) -> dict[str, int]:
        """Solver statistics of the last forward: ``nfe``, ``nfe_backward`` and step counts."""

    @abstractmethod
    def with_solver(self, solver: str, **options: Any) -> Block:
        """A new block integrating the *same* field object with ``solver``.

        A fixed scheme name (``euler``, ``midpoint``, ``heun``, ``rk4``, ...) with ``steps=N``
        gives a ``ResidualStack``; an adaptive name (``dopri5``, ...), or any torchdiffeq method
        with ``step_size=h``, gives an ``ODEBlock``. The new block has this block's training mode.
        """

    @abstractmethod
    def forward(self, x: State) -> State:
        """The state at ``T`` from the initial state ``x`` (a tensor, or a tuple of tensors)."""

    @abstractmethod
    def trajectory(self, x: State, times: Any = None) -> State:
        """States of the solve from ``x``, stacked along a new leading dimension (per tensor of a tuple state);
        ``times``: the times wanted, ``x`` being the state at ``times[0]``."""

    def _same_mode(self, block: Block) -> Block:
        """``block`` (made by ``with_solver``) in this block's training mode, compiled when this block is and
        ``block`` can be; its field is left as it is."""
        block.training = self.training
        if self._compile_options is not None and block.compilable:
            args, kwargs = self._compile_options
            block.compile(*args, **kwargs)
        return block


#: The concrete blocks ``make_block`` builds, registered by their modules (``stack``: ``ResidualStack``,
#: ``ode``: ``ODEBlock``), so that each block's ``with_solver`` can make the other without an import cycle.
BLOCK_CLASSES: dict[str, Callable[..., Block]] = {}


def make_block(field: nn.Module, solver: str = "euler", T: float = 1.0, **options: Any) -> Block:
    """The block that integrates ``field`` on ``[0, T]`` with ``solver``.

    Fixed schemes without torchdiffeq-only options (``step_size``, ``rtol``, ``adjoint``, ...) give a
    ``ResidualStack`` (``steps`` required); everything else gives an ``ODEBlock`` (torchdiffeq).
    """
    check_solver_name(solver)
    if wants_stack(solver, options):
        if "steps" not in options:
            raise ValueError(
                f"solver {solver!r} is a fixed-step scheme: give steps=N (a ResidualStack) "
                "or step_size=h (a torchdiffeq ODEBlock)"
            )
        return BLOCK_CLASSES["stack"](field, T=T, scheme=solver, **options)
    if "steps" in options:
        raise ValueError(
            f"steps is only for the fixed-step schemes of ResidualStack {sorted(SCHEMES)}, without "
            f"torchdiffeq-only options; solver {solver!r} takes rtol/atol (adaptive) or step_size=h (a fixed grid)"
        )
    return BLOCK_CLASSES["ode"](field, T=T, solver=solver, **options)
