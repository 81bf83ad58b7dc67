"""Bad inputs to the library are refused with the right exception, and its message names the argument.

Then the input contracts of every block: a non-finite initial state is refused, an empty batch works, the
field's output shape is checked at every evaluation, a field's own exception reaches the caller unchanged
(only torchdiffeq's failures become ``SolverError``), a ``DepthIndexedField`` shares its block's horizon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import odenet
from odenet import (
    Augment,
    Block,
    ButcherTableau,
    ConvField,
    DepthIndexedField,
    LinearField,
    MLPField,
    NonFiniteStateError,
    ODEBlock,
    RegularizedDynamics,
    ResidualStack,
    SolverError,
    augment,
    make_block,
    raised_by_field,
    register_scheme,
)
from odenet import analysis as an
from odenet._args import ArgumentTypeError
from odenet.analysis._util import time_grid
from odenet.fields import make_activation
from odenet.models import Classifier, group_norm, image_head, image_stem, vector_head, vector_stem
from odenet.solvers import SCHEMES, get_scheme

F64 = torch.float64


def mlp(dim: int = 2) -> MLPField:
    return MLPField(dim, hidden=4, depth=1).double()


def model() -> Classifier:
    return Classifier(nn.Identity(), ResidualStack(mlp(), 2), nn.Linear(2, 2)).double()


def tableau(name: str = "t", order: Any = 1, a: Any = ((),), b: Any = (1.0,), c: Any = (0.0,)) -> ButcherTableau:
    return ButcherTableau(name, order, a=a, b=b, c=c)


# Each case: (id, call, exception type, regex the message must match: the argument's name).
Case = tuple[str, Callable[[], Any], type[BaseException], str]
TE, VE = ArgumentTypeError, ValueError

STACK: list[Case] = [
    ("steps=0", lambda: ResidualStack(mlp(), 0), VE, "steps"),
    ("steps=-1", lambda: ResidualStack(mlp(), -1), VE, "steps"),
    ("steps=2.5", lambda: ResidualStack(mlp(), 2.5), TE, "steps"),
    ("steps=3.0", lambda: ResidualStack(mlp(), 3.0), TE, "steps"),
    ("steps=True", lambda: ResidualStack(mlp(), True), TE, "steps"),
    ("steps='3'", lambda: ResidualStack(mlp(), "3"), TE, "steps"),
    ("steps=None", lambda: ResidualStack(mlp(), None), TE, "steps"),
    ("T='1'", lambda: ResidualStack(mlp(), 3, T="1"), TE, "T must"),
    ("T=True", lambda: ResidualStack(mlp(), 3, T=True), TE, "T must"),
    ("T=0", lambda: ResidualStack(mlp(), 3, T=0), VE, "T must"),
    ("T=-1", lambda: ResidualStack(mlp(), 3, T=-1.0), VE, "T must"),
    ("T=nan", lambda: ResidualStack(mlp(), 3, T=math.nan), VE, "T must"),
    ("T=inf", lambda: ResidualStack(mlp(), 3, T=math.inf), VE, "T must"),
    ("scheme=foo", lambda: ResidualStack(mlp(), 3, scheme="foo"), VE, "scheme"),
    ("scheme=4", lambda: ResidualStack(mlp(), 3, scheme=4), TE, "scheme"),
    ("shortcut='yes'", lambda: ResidualStack(mlp(), 3, shortcut="yes"), TE, "shortcut"),
    ("shortcut=1", lambda: ResidualStack(mlp(), 3, shortcut=1), TE, "shortcut"),
    ("learn_steps='no'", lambda: ResidualStack(mlp(), 3, learn_steps="no"), TE, "learn_steps"),
    ("learn_steps=0", lambda: ResidualStack(mlp(), 3, learn_steps=0), TE, "learn_steps"),
    ("learn_steps+plain", lambda: ResidualStack(mlp(), 3, shortcut=False, learn_steps=True), VE, "learn_steps"),
    ("plain+rk4", lambda: ResidualStack(mlp(), 3, scheme="rk4", shortcut=False), VE, "shortcut"),
    ("regularizers='kinetic'", lambda: ResidualStack(mlp(), 3, regularizers="kinetic"), TE, "regularizers"),
    ("regularizers=[kinetik]", lambda: ResidualStack(mlp(), 3, regularizers=["kinetik"]), VE, "regularizers"),
    ("regularizers=[1]", lambda: ResidualStack(mlp(), 3, regularizers=[1]), TE, "regularizers"),
    ("noise=uniform", lambda: ResidualStack(mlp(), 3, regularizers=["jacobian"], noise="uniform"), VE, "noise"),
    ("noise=1", lambda: ResidualStack(mlp(), 3, noise=1), TE, "noise"),
    ("field=lambda", lambda: ResidualStack(lambda t, x: x, 3), TypeError, "field"),
    ("field=None", lambda: ResidualStack(None, 3), TypeError, "field"),
]

ODE: list[Case] = [
    ("solver=foo", lambda: ODEBlock(mlp(), solver="foo"), VE, "solver"),
    ("solver=5", lambda: ODEBlock(mlp(), solver=5), TE, "solver"),
    ("T='2'", lambda: ODEBlock(mlp(), T="2"), TE, "T must"),
    ("T=0", lambda: ODEBlock(mlp(), T=0.0), VE, "T must"),
    ("rtol='1e-3'", lambda: ODEBlock(mlp(), rtol="1e-3"), TE, "rtol"),
    ("rtol=True", lambda: ODEBlock(mlp(), rtol=True), TE, "rtol"),
    ("rtol=0", lambda: ODEBlock(mlp(), rtol=0.0), VE, "rtol"),
    ("rtol=-1", lambda: ODEBlock(mlp(), rtol=-1e-3), VE, "rtol"),
    ("rtol=nan", lambda: ODEBlock(mlp(), rtol=math.nan), VE, "rtol"),
    ("rtol=inf", lambda: ODEBlock(mlp(), rtol=math.inf), VE, "rtol"),
    ("atol='x'", lambda: ODEBlock(mlp(), atol="x"), TE, "atol"),
    ("atol=False", lambda: ODEBlock(mlp(), atol=False), TE, "atol"),
    ("atol=0", lambda: ODEBlock(mlp(), atol=0), VE, "atol"),
    ("step_size='0.1'", lambda: ODEBlock(mlp(), solver="rk4", step_size="0.1"), TE, "step_size"),
    ("step_size=True", lambda: ODEBlock(mlp(), solver="rk4", step_size=True), TE, "step_size"),
    ("step_size=0", lambda: ODEBlock(mlp(), solver="euler", step_size=0.0), VE, "step_size"),
    ("step_size=nan", lambda: ODEBlock(mlp(), solver="euler", step_size=math.nan), VE, "step_size"),
    ("step_size missing", lambda: ODEBlock(mlp(), solver="rk4"), VE, "step_size"),
    ("max_steps=0", lambda: ODEBlock(mlp(), max_steps=0), VE, "max_steps"),
    ("max_steps=2.5", lambda: ODEBlock(mlp(), max_steps=2.5), TE, "max_steps"),
    ("max_steps=True", lambda: ODEBlock(mlp(), max_steps=True), TE, "max_steps"),
    ("max_steps='10'", lambda: ODEBlock(mlp(), max_steps="10"), TE, "max_steps"),
    ("min_step=-1", lambda: ODEBlock(mlp(), min_step=-1.0), VE, "min_step"),
    ("min_step='0'", lambda: ODEBlock(mlp(), min_step="0"), TE, "min_step"),
    ("min_step>=max_step", lambda: ODEBlock(mlp(), min_step=0.5, max_step=0.5), VE, "min_step"),
    ("max_step=0", lambda: ODEBlock(mlp(), max_step=0.0), VE, "max_step"),
    ("max_step=True", lambda: ODEBlock(mlp(), max_step=True), TE, "max_step"),
    ("max_step=nan", lambda: ODEBlock(mlp(), max_step=math.nan), VE, "max_step"),
    ("adjoint='yes'", lambda: ODEBlock(mlp(), adjoint="yes"), TE, "adjoint"),
    ("adjoint=1", lambda: ODEBlock(mlp(), adjoint=1), TE, "adjoint"),
    ("adjoint=None", lambda: ODEBlock(mlp(), adjoint=None), TE, "adjoint"),
    ("penalty_error_control=0", lambda: ODEBlock(mlp(), regularizers=["kinetic"], penalty_error_control=0),
     TE, "penalty_error_control"),
    # Options the chosen solver would ignore.
    ("rtol+fixed grid", lambda: ODEBlock(mlp(), solver="rk4", step_size=0.1, rtol=1e-3), VE, "rtol"),
    ("atol+fixed grid", lambda: ODEBlock(mlp(), solver="euler", step_size=0.1, atol=1e-4), VE, "atol"),
    ("max_steps+fixed grid", lambda: ODEBlock(mlp(), solver="rk4", step_size=0.1, max_steps=5), VE, "max_steps"),
    ("min_step+fixed grid", lambda: ODEBlock(mlp(), solver="rk4", step_size=0.1, min_step=0.01), VE, "min_step"),
    ("max_step+fixed grid", lambda: ODEBlock(mlp(), solver="midpoint", step_size=0.1, max_step=1.0), VE, "max_step"),
    ("step_size+adaptive", lambda: ODEBlock(mlp(), solver="dopri5", step_size=0.1), VE, "step_size"),
    ("penalty_error_control=False, no regularizers", lambda: ODEBlock(mlp(), penalty_error_control=False),
     VE, "penalty_error_control"),
    ("penalty_error_control=False+fixed grid", lambda: ODEBlock(
        mlp(), solver="rk4", step_size=0.1, regularizers=["kinetic"], penalty_error_control=False),
     VE, "penalty_error_control"),
]

MAKE_AND_SWAP: list[Case] = [
    ("make_block solver=None", lambda: make_block(mlp(), None), TE, "solver"),
    ("make_block solver=['rk4']", lambda: make_block(mlp(), ["rk4"], steps=2), TE, "solver"),
    ("make_block rk4 without steps", lambda: make_block(mlp(), "rk4"), VE, "steps"),
    ("make_block dopri5 with steps", lambda: make_block(mlp(), "dopri5", steps=4), VE, "steps"),
    ("make_block heun2 with steps", lambda: make_block(mlp(), "heun2", steps=4), VE, "steps"),
    ("make_block steps='4'", lambda: make_block(mlp(), "rk4", steps="4"), TE, "steps"),
    ("make_block unknown option", lambda: make_block(mlp(), "rk4", steps=2, tolerance=1e-3), TypeError, "tolerance"),
    ("make_block euler+rtol+step_size", lambda: make_block(mlp(), "euler", step_size=0.5, rtol=1e-3), VE, "rtol"),
    ("with_solver unknown", lambda: ResidualStack(mlp(), 2).with_solver("foo"), VE, "solver"),
    ("with_solver solver=3", lambda: ODEBlock(mlp()).with_solver(3), TE, "solver"),
    ("with_solver rtol+fixed grid", lambda: ODEBlock(mlp()).with_solver("rk4", step_size=0.1, rtol=1e-5), VE, "rtol"),
    ("with_solver step_size+adaptive", lambda: ResidualStack(mlp(), 2).with_solver("dopri5", step_size=0.1),
     VE, "step_size"),
    ("with_solver plain to rk4", lambda: ResidualStack(mlp(), 2, shortcut=False).with_solver("rk4", steps=2),
     VE, "shortcut=False"),
    ("with_solver steps='8'", lambda: ResidualStack(mlp(), 2).with_solver("rk4", steps="8"), TE, "steps"),
    ("with_solver adjoint='no'", lambda: ODEBlock(mlp()).with_solver("bosh3", adjoint="no"), TE, "adjoint"),
    ("with_solver euler, neither steps nor step_size", lambda: ODEBlock(mlp()).with_solver("euler"), VE, "steps"),
]

CALLS: list[Case] = [
    ("stack x=list", lambda: ResidualStack(mlp(), 2)([[0.0, 1.0]]), TypeError, "x"),
    ("ode x=None", lambda: ODEBlock(mlp())(None), TypeError, "x"),
    ("trajectory times=True", lambda: ODEBlock(mlp()).trajectory(torch.zeros(1, 2, dtype=F64), times=True),
     TypeError, "times"),
    ("trajectory times=0", lambda: ODEBlock(mlp()).trajectory(torch.zeros(1, 2, dtype=F64), times=0), VE, "times"),
    ("trajectory times not monotonic", lambda: ODEBlock(mlp()).trajectory(torch.zeros(1, 2, dtype=F64),
                                                                            [0.5, 1.0, 0.75]), VE, "times"),
]

FIELDS: list[Case] = [
    ("MLPField dim=0", lambda: MLPField(0), VE, "dim"),
    ("MLPField dim='3'", lambda: MLPField("3"), TE, "dim"),
    ("MLPField dim=True", lambda: MLPField(True), TE, "dim"),
    ("MLPField hidden=0", lambda: MLPField(2, hidden=0), VE, "hidden"),
    ("MLPField hidden=8.0", lambda: MLPField(2, hidden=8.0), TE, "hidden"),
    ("MLPField depth='2'", lambda: MLPField(2, depth="2"), TE, "depth"),
    ("MLPField depth=0", lambda: MLPField(2, depth=0), VE, "depth"),
    ("MLPField activation=foo", lambda: MLPField(2, activation="foo"), VE, "activation"),
    ("MLPField activation=module", lambda: MLPField(2, activation=nn.Tanh()), TE, "activation"),
    ("MLPField time=sin", lambda: MLPField(2, time="sin"), VE, "time"),
    ("MLPField time=True", lambda: MLPField(2, time=True), TE, "time"),
    ("make_activation(None)", lambda: make_activation(None), TE, "activation"),
    ("ConvField channels=0", lambda: ConvField(0), VE, "channels"),
    ("ConvField hidden='8'", lambda: ConvField(2, hidden="8"), TE, "hidden"),
    ("ConvField kernel=2", lambda: ConvField(2, kernel=2), VE, "kernel"),
    ("ConvField kernel='3'", lambda: ConvField(2, kernel="3"), TE, "kernel"),
    ("ConvField kernel=True", lambda: ConvField(2, kernel=True), TE, "kernel"),
    ("ConvField groups=0", lambda: ConvField(2, groups=0), VE, "groups"),
    ("ConvField groups not dividing", lambda: ConvField(4, hidden=6, groupnorm=True, groups=4), VE, "groups"),
    ("ConvField groupnorm='yes'", lambda: ConvField(2, groupnorm="yes"), TE, "groupnorm"),
    ("ConvField preact=1", lambda: ConvField(2, preact=1), TE, "preact"),
    ("ConvField activation=foo", lambda: ConvField(2, activation="foo"), VE, "activation"),
    ("ConvField time=none!", lambda: ConvField(2, time="None"), VE, "time"),
    ("LinearField dim='2'", lambda: LinearField("2"), TE, "dim"),
    ("LinearField zero_init='no'", lambda: LinearField(2, zero_init="no"), TE, "zero_init"),
    ("DepthIndexedField make_field=module", lambda: DepthIndexedField(mlp(), 2), TypeError, "make_field"),
    ("DepthIndexedField make_field returns None", lambda: DepthIndexedField(lambda: None, 2), TypeError, "make_field"),
    ("DepthIndexedField depth=0", lambda: DepthIndexedField(mlp, 0), VE, "depth"),
    ("DepthIndexedField depth='2'", lambda: DepthIndexedField(mlp, "2"), TE, "depth"),
    ("DepthIndexedField T=0", lambda: DepthIndexedField(mlp, 2, T=0.0), VE, "T must"),
    ("DepthIndexedField T='1'", lambda: DepthIndexedField(mlp, 2, T="1"), TE, "T must"),
    ("DepthIndexedField T=nan", lambda: DepthIndexedField(mlp, 2, T=math.nan), VE, "T must"),
    ("Augment extra=-1", lambda: Augment(-1), VE, "extra"),
    ("Augment extra=1.5", lambda: Augment(1.5), TE, "extra"),
    ("Augment extra='2'", lambda: Augment("2"), TE, "extra"),
    ("Augment extra=True", lambda: Augment(True), TE, "extra"),
    ("Augment dim='1'", lambda: Augment(2, dim="1"), TE, "dim"),
    ("Augment dim=1.0", lambda: Augment(2, dim=1.0), TE, "dim"),
    ("augment extra=-2", lambda: augment(torch.zeros(2, 3), -2), VE, "extra"),
    ("augment dim out of range", lambda: augment(torch.zeros(2, 3), 1, dim=2), VE, "dim"),
    ("augment x=list", lambda: augment([1.0], 1), TypeError, "x"),
]

TABLEAUX: list[Case] = [
    ("name=''", lambda: tableau(name=""), VE, "name"),
    ("name=3", lambda: tableau(name=3), VE, "name"),
    ("order=0", lambda: tableau(order=0), VE, "order"),
    ("order=1.5", lambda: tableau(order=1.5), TE, "order"),
    ("order=True", lambda: tableau(order=True), TE, "order"),
    ("sum b != 1", lambda: tableau(b=(0.9,)), VE, "b must sum to 1"),
    ("row sum != c", lambda: tableau(order=2, a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.6)), VE, "row-sum"),
    ("c > 1", lambda: tableau(order=2, a=((), (1.5,)), b=(0.5, 0.5), c=(0.0, 1.5)), VE, r"c\[1\]"),
    ("c < 0", lambda: tableau(order=2, a=((), (-0.5,)), b=(0.5, 0.5), c=(0.0, -0.5)), VE, r"c\[1\]"),
    ("nan in b", lambda: tableau(b=(math.nan,)), VE, "b must hold finite"),
    ("inf in a", lambda: tableau(order=2, a=((), (math.inf,)), b=(0.5, 0.5), c=(0.0, 1.0)), VE, "row 1 of a"),
    ("string in c", lambda: tableau(c=("0",)), TE, "c must hold numbers"),
    ("b a string", lambda: tableau(b="1"), TE, "b must be a sequence"),
    ("a not a sequence", lambda: tableau(a=None), TE, "a must be a sequence"),
    ("no stages", lambda: tableau(a=(), b=(), c=()), VE, "stages"),
    ("stages differ", lambda: tableau(b=(0.5, 0.5)), VE, "stages"),
    ("implicit row", lambda: tableau(order=2, a=((), (0.5, 0.5)), b=(0.5, 0.5), c=(0.0, 1.0)), VE, "row 1"),
    ("register a different rk4", lambda: register_scheme(tableau(name="rk4")), VE, "'rk4'"),
    ("register as dopri5", lambda: register_scheme(tableau(name="dopri5")), VE, "'dopri5'"),
    ("register a dict", lambda: register_scheme({"name": "x"}), TypeError, "tableau"),
    ("get_scheme(4)", lambda: get_scheme(4), TE, "scheme"),
]

REGULARIZATION: list[Case] = [
    ("RegularizedDynamics field=lambda", lambda: RegularizedDynamics(lambda t, x: x, ["kinetic"]), TypeError, "field"),
    ("RegularizedDynamics none", lambda: RegularizedDynamics(mlp(), []), VE, "at least one"),
    ("RegularizedDynamics 'jacobian'", lambda: RegularizedDynamics(mlp(), "jacobian"), TE, "regularizers"),
    ("ODEBlock regularizers=None", lambda: ODEBlock(mlp(), regularizers=None), TE, "regularizers"),
    ("ODEBlock noise=None", lambda: ODEBlock(mlp(), regularizers=["jacobian"], noise=None), TE, "noise"),
    ("plain net with regularizers", lambda: ResidualStack(mlp(), 2, shortcut=False, regularizers=["kinetic"]),
     VE, "shortcut=True"),
]

MODELS: list[Case] = [
    ("Classifier stem=lambda", lambda: Classifier(lambda x: x, ResidualStack(mlp(), 2), nn.Identity()),
     TypeError, "stem"),
    ("Classifier block=None", lambda: Classifier(nn.Identity(), None, nn.Identity()), TypeError, "block"),
    ("Classifier head=3", lambda: Classifier(nn.Identity(), ResidualStack(mlp(), 2), 3), TypeError, "head"),
    ("Classifier amp_dtype=float32", lambda: Classifier(nn.Identity(), ResidualStack(mlp(), 2), nn.Identity(),
                                                        torch.float32), VE, "amp_dtype"),
    ("Classifier amp_dtype='bfloat16'", lambda: Classifier(nn.Identity(), ResidualStack(mlp(), 2), nn.Identity(),
                                                           "bfloat16"), VE, "amp_dtype"),
    ("vector_stem in_features=0", lambda: vector_stem(0, None, 0), VE, "in_features"),
    ("vector_stem width='8'", lambda: vector_stem(4, "8", 0), TE, "width"),
    ("vector_stem augment=-1", lambda: vector_stem(4, None, -1), VE, "augment"),
    ("image_stem kind=vit", lambda: image_stem(1, 8, 0, kind="vit"), VE, "kind"),
    ("image_stem groups=0", lambda: image_stem(1, 8, 0, groups=0), VE, "groups"),
    ("image_stem augment=1.5", lambda: image_stem(1, 8, 1.5), TE, "augment"),
    ("vector_head num_classes=0", lambda: vector_head(4, 0), VE, "num_classes"),
    ("image_head norm='yes'", lambda: image_head(8, 10, norm="yes"), TE, "norm"),
    ("group_norm channels=0", lambda: group_norm(0), VE, "channels"),
]

ANALYSIS: list[Case] = [
    ("time_grid times=0", lambda: time_grid(1.0, 0), VE, "times"),
    ("time_grid times beyond T", lambda: time_grid(1.0, [0.0, 2.0]), VE, "times"),
    ("adaptive_steps solver=rk4", lambda: an.adaptive_steps(model(), torch.zeros(1, 2, dtype=F64), solver="rk4"),
     VE, "solver"),
    ("step_shares bins=0", lambda: an.step_shares([0.5, 0.5], bins=0), VE, "bins"),
    ("concentration empty", lambda: an.concentration([]), VE, "step sizes"),
    ("top_hessian_eigenvalue max_iters=0", lambda: an.top_hessian_eigenvalue(
        model(), torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=torch.long), max_iters=0), VE, "max_iters"),
    ("top_hessian_eigenvalue tol=0", lambda: an.top_hessian_eigenvalue(
        model(), torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=torch.long), tol=0.0), VE, "tol"),
    ("hessian_trace samples=0", lambda: an.hessian_trace(
        model(), torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=torch.long), samples=0), VE, "samples"),
    ("normalize_direction norm=unit", lambda: an.normalize_direction(
        {"w": torch.ones(2)}, {"w": torch.ones(2)}, norm="unit"), VE, "norm"),
    ("slice_1d steps=1", lambda: an.slice_1d(model(), torch.zeros(2, 2, dtype=F64),
                                             torch.zeros(2, dtype=torch.long), steps=1), VE, "steps"),
    ("slice_1d span reversed", lambda: an.slice_1d(model(), torch.zeros(2, 2, dtype=F64),
                                                   torch.zeros(2, dtype=torch.long), span=(1.0, -1.0)), VE, "span"),
    ("loglog_slope lengths", lambda: an.loglog_slope([1.0, 2.0], [1.0]), VE, "same length"),
    ("step_speeds reduction=sum", lambda: an.step_speeds(model(), torch.zeros(2, 2, dtype=F64), reduction="sum"),
     VE, "reduction"),
    ("step_jacobian_determinants of an ODEBlock", lambda: an.step_jacobian_determinants(
        ODEBlock(mlp()), torch.zeros(2, 2, dtype=F64)), VE, "ResidualStack"),
    ("depth_increments of a field", lambda: an.depth_increments(mlp()), TypeError, "DepthIndexedField"),
]

CASES = {
    "stack": STACK, "ode": ODE, "make_and_swap": MAKE_AND_SWAP, "calls": CALLS, "fields": FIELDS,
    "tableaux": TABLEAUX, "regularization": REGULARIZATION, "models": MODELS, "analysis": ANALYSIS,
}
ALL = [pytest.param(call, exc, match, id=f"{group}:{name}")
       for group, cases in CASES.items() for name, call, exc, match in cases]


def test_the_battery_is_large_enough():
    assert len(ALL) >= 90
    assert len({p.id for p in ALL}) == len(ALL)


@pytest.mark.parametrize(("call", "exc", "match"), ALL)
def test_bad_input_is_refused_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_a_wrong_type_is_both_a_type_error_and_a_value_error():
    with pytest.raises(TypeError, match="steps"):
        ResidualStack(mlp(), "3")
    with pytest.raises(ValueError, match="steps"):
        ResidualStack(mlp(), "3")
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


def test_good_numbers_of_other_types_are_accepted():
    import numpy as np

    stack = ResidualStack(mlp(), np.int64(3), T=np.float64(2.0))
    assert stack.steps == 3 and type(stack.steps) is int and stack.T == 2.0
    ode = ODEBlock(mlp(), T=2, rtol=np.float32(1e-4), max_steps=np.int32(50))
    assert ode.rtol == pytest.approx(1e-4) and ode.max_steps == 50 and ode.T == 2.0


# --- Block is abstract, its concrete blocks final ------------------------------------------------


def test_block_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        Block()

    class Partial(Block):
        def forward(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(TypeError, match="abstract"):
        Partial()
    assert isinstance(ResidualStack(mlp(), 2), Block) and isinstance(ODEBlock(mlp()), Block)


def test_integrator_property_is_the_blocks_integrator():
    field = mlp()
    assert ResidualStack(field, 4, scheme="rk4").integrator == odenet.Integrator("rk4", steps=4)
    assert ODEBlock(field, rtol=1e-5, atol=1e-7, adjoint=True).integrator == odenet.Integrator(
        "dopri5", rtol=1e-5, atol=1e-7, adjoint=True)
    assert ODEBlock(field, solver="euler", step_size=0.25).integrator.label(1.0) == "euler N=4 (h=1/4)"


# --- options the solver ignores: only what the caller passes is refused ---------------------------


def test_with_solver_drops_carried_options_the_new_solver_would_ignore():
    field = mlp()
    old = ODEBlock(field, rtol=1e-5, atol=1e-7, max_steps=50, min_step=1e-6, max_step=0.5,
                   regularizers=["kinetic"], penalty_error_control=False, adjoint=True)
    fixed = old.with_solver("rk4", step_size=0.1)
    assert isinstance(fixed, ODEBlock) and fixed.step_size == 0.1 and fixed.adjoint
    assert fixed.regularizers == ("kinetic",) and "rtol" not in fixed.options
    implicit = old.with_solver("implicit_adams", step_size=0.1)
    assert (implicit.rtol, implicit.atol) == (1e-5, 1e-7)  # implicit Adams uses its tolerances
    back = fixed.with_solver("dopri5")
    assert (back.rtol, back.atol, back.max_steps) == (1e-3, 1e-4, 10_000)
    same = old.with_solver("bosh3")
    assert (same.rtol, same.max_steps, same.min_step, same.max_step, same.penalty_error_control) == (
        1e-5, 50, 1e-6, 0.5, False)
    # Dropping the regularizers drops their error-control switch too.
    assert old.with_solver("dopri5", regularizers=()).penalty_error_control is True


@pytest.mark.parametrize("make", [
    lambda f: ODEBlock(f, rtol=1e-5, regularizers=["kinetic"], penalty_error_control=False),
    lambda f: ODEBlock(f, solver="rk4", step_size=0.2, adjoint=True),
    lambda f: ODEBlock(f, solver="implicit_adams", step_size=0.2, rtol=1e-4),
], ids=["dopri5", "rk4", "implicit_adams"])
def test_options_rebuild_the_block(make):
    block = make(mlp())
    again = ODEBlock(block.field, T=block.T, **block.options)
    assert again.options == block.options


# --- non-finite initial states ---------------------------------------------------------------------


def _blocks(field: nn.Module) -> dict[str, Block]:
    return {
        "euler": ResidualStack(field, 3),
        "rk4": ResidualStack(field, 3, scheme="rk4"),
        "plain": ResidualStack(field, 3, shortcut=False),
        "learned": ResidualStack(field, 3, learn_steps=True).double(),
        "dopri5": ODEBlock(field),
        "fixed_grid": ODEBlock(field, solver="rk4", step_size=0.25),
        "adjoint": ODEBlock(field, adjoint=True),
    }


KINDS = list(_blocks(nn.Identity()))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_initial_state_is_refused(kind, bad):
    block = _blocks(mlp())[kind]
    x = torch.zeros(3, 2, dtype=F64)
    x[1, 0] = bad
    with pytest.raises(NonFiniteStateError, match="initial state x is not finite"):
        block(x)
    with pytest.raises(ValueError, match="initial state x is not finite"):
        block.trajectory(x)


# --- empty batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_gives_an_empty_output(kind):
    block = _blocks(mlp())[kind]
    x = torch.zeros(0, 2, dtype=F64, requires_grad=True)
    y = block(x)
    assert y.shape == (0, 2) and y.dtype == F64
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 2)
    traj = block.trajectory(x.detach())
    assert traj.shape[1:] == (0, 2) and traj.shape[0] >= 2
    if isinstance(block, ODEBlock):
        assert block.nfe == 0 and block.nfe_backward == 0 and len(block.step_sizes) == 0
    else:
        assert block.nfe == block.steps * block.tableau.stages


@pytest.mark.parametrize("kind", ["euler", "dopri5"])
def test_empty_batch_penalties_are_zero(kind):
    field = mlp()
    block = (ResidualStack(field, 3, regularizers=["kinetic", "jacobian"]) if kind == "euler"
             else ODEBlock(field, regularizers=["kinetic", "jacobian"]))
    block(torch.zeros(0, 2, dtype=F64))
    assert {k: float(v.detach()) for k, v in block.regularization.items()} == {"kinetic": 0.0, "jacobian": 0.0}


# --- the field's output shape, at every evaluation -------------------------------------------------


class ShapeOnCall(nn.Module):
    """``-x``, but drops the last feature on its ``bad``-th call (counting calls with ``x.requires_grad`` only
    when ``backward``)."""

    def __init__(self, bad: int, backward: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.bad, self.backward, self.calls = bad, backward, 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if not self.backward or x.requires_grad:
            self.calls += 1
        out = -self.w * x
        return out[..., :-1] if self.calls == self.bad else out


@pytest.mark.parametrize("kind", KINDS)
def test_field_shape_is_checked_on_a_later_evaluation(kind):
    field = ShapeOnCall(bad=3)
    block = _blocks(field)[kind]
    with pytest.raises(ValueError, match="field returned shape"):
        block(torch.ones(2, 3, dtype=F64))
    assert field.calls == 3


def test_field_shape_is_checked_in_the_adjoint_backward():
    field = ShapeOnCall(bad=2, backward=True)
    y = ODEBlock(field, adjoint=True)(torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="field returned shape"):
        y.sum().backward()


# --- a field's own exceptions pass through unchanged ----------------------------------------------


class Raising(nn.Module):
    """``-x`` that raises ``err`` on call ``at`` (counting only calls with ``x.requires_grad`` when ``backward``)."""

    def __init__(self, err: Exception, at: int, backward: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.err, self.at, self.backward, self.calls = err, at, backward, 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        if not self.backward or x.requires_grad:
            self.calls += 1
            if self.calls == self.at:
                raise self.err
        return -self.w * x


@pytest.mark.parametrize("err", [AssertionError("my field's check"), RuntimeError("my field broke"),
                                 KeyError("my key")], ids=["assertion", "runtime", "key"])
@pytest.mark.parametrize("kind", ["dopri5", "fixed_grid", "adjoint", "rk4"])
def test_a_field_exception_reaches_the_caller_unchanged(err, kind):
    block = _blocks(Raising(err, at=4))[kind]
    with pytest.raises(type(err)) as info:
        block(torch.ones(2, 2, dtype=F64))
    assert info.value is err and not isinstance(info.value, SolverError) and raised_by_field(info.value)


@pytest.mark.parametrize("err", [AssertionError("in my backward"), RuntimeError("in my backward")],
                         ids=["assertion", "runtime"])
def test_a_field_exception_in_the_adjoint_backward_reaches_the_caller_unchanged(err):
    y = ODEBlock(Raising(err, at=3, backward=True), adjoint=True)(torch.ones(2, 2, dtype=F64))
    with pytest.raises(type(err)) as info:
        y.sum().backward()
    assert info.value is err and raised_by_field(info.value)


def test_torchdiffeqs_own_failures_still_become_solver_errors():
    block = ODEBlock(Raising(RuntimeError("never"), at=-1), rtol=1e-10, atol=1e-12, max_steps=2)
    with pytest.raises(SolverError, match="max_steps") as info:
        block(torch.ones(2, 2, dtype=F64))
    assert isinstance(info.value.__cause__, AssertionError) and not raised_by_field(info.value.__cause__)


def test_an_inner_blocks_solver_error_inside_a_field_passes_through():
    inner = ODEBlock(Raising(RuntimeError("never"), at=-1), rtol=1e-10, atol=1e-12, max_steps=2)

    class Nested(nn.Module):
        def forward(self, t: Tensor, x: Tensor) -> Tensor:
            return inner(x) - x

    with pytest.raises(SolverError, match="max_steps=2"):
        ODEBlock(Nested())(torch.ones(2, 2, dtype=F64))


# --- DepthIndexedField shares its block's horizon -------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda f: ResidualStack(f, 4, T=1.0),
    lambda f: ODEBlock(f, T=1.0),
    lambda f: make_block(f, "rk4", T=1.0, steps=4),
    lambda f: make_block(f, "euler", T=1.0, step_size=0.25),
], ids=["stack", "ode", "make_block_stack", "make_block_ode"])
def test_depth_indexed_field_horizon_must_match_the_block(make):
    field = DepthIndexedField(mlp, depth=4, T=2.0)
    with pytest.raises(ValueError, match=r"horizon T=2 differs from the block's T=1"):
        make(field)


def test_depth_indexed_field_with_its_own_horizon_is_accepted_and_kept_by_with_solver():
    field = DepthIndexedField(mlp, depth=4, T=2.0)
    stack = ResidualStack(field, 4, T=2.0)
    for other in (stack.with_solver("rk4", steps=8), stack.with_solver("dopri5"),
                  stack.with_solver("euler", step_size=0.5)):
        assert other.T == 2.0 and other.field is field


# --- tableaux ---------------------------------------------------------------------------------------


def test_registering_an_equal_tableau_again_is_allowed(monkeypatch):
    rk4 = SCHEMES["rk4"]
    copy = ButcherTableau("rk4", rk4.order, a=[list(r) for r in rk4.a], b=list(rk4.b), c=list(rk4.c))
    assert copy == rk4 and register_scheme(copy) is copy and SCHEMES["rk4"] is rk4
    monkeypatch.setitem(SCHEMES, "mid2", None)  # removed again after the test
    mid = ButcherTableau("mid2", 2, a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5))
    register_scheme(mid)
    with pytest.raises(ValueError, match="'mid2'"):
        register_scheme(ButcherTableau("mid2", 2, a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0)))
    assert SCHEMES["mid2"] is mid


def test_every_registered_tableau_is_consistent():
    for tab in SCHEMES.values():
        assert math.isclose(sum(tab.b), 1.0, abs_tol=1e-12)
        assert all(math.isclose(sum(row), c, abs_tol=1e-12) for row, c in zip(tab.a, tab.c))


def test_the_analysis_refuses_nothing_it_should_accept():
    """The battery's analysis cases fail for their argument alone: the same calls with good values run."""
    x, y = torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=torch.long)
    assert an.step_shares([0.5, 0.5], bins=2) == [0.5, 0.5]
    assert len(time_grid(1.0, 2)) == 3
    assert an.slice_1d(model(), x, y, steps=3, loss_fn=F.cross_entropy).losses.shape == (3,)
