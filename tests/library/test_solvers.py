"""Butcher tableaux, the generic RK step, convergence orders and solver accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LinearField, TimeScaledLinearField, linear_exact, observed_order

import odenet
from odenet import SCHEMES, ButcherTableau, ODEBlock, ResidualStack
from odenet.solvers import all_solver_names, get_scheme, is_adaptive, rk_step, stage_times

NOMINAL = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk3": 3, "rk4": 4}
# Step counts for the order fits: errors stay well above float64 roundoff over each range.
STEP_RANGES = {1: [4, 8, 16, 32, 64], 2: [4, 8, 16, 32, 64], 3: [4, 8, 16, 32, 64], 4: [4, 8, 16, 32]}


# --- tableaux -------------------------------------------------------------------------------------


def test_registry_holds_the_documented_schemes_and_orders():
    assert {name: SCHEMES[name].order for name in NOMINAL} == NOMINAL
    assert {name: SCHEMES[name].stages for name in NOMINAL} == {
        "euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk3": 3, "rk4": 4,
    }


@pytest.mark.parametrize("name", sorted(NOMINAL))
def test_tableau_satisfies_order_conditions(name):
    """The classical order conditions up to the tableau's nominal order (and row-sum consistency)."""
    tab = SCHEMES[name]
    s = tab.stages
    A = [[tab.a[i][j] if j < i else 0.0 for j in range(s)] for i in range(s)]
    b, c = tab.b, tab.c
    for i in range(s):
        assert math.isclose(sum(A[i]), c[i], abs_tol=1e-14), f"c_{i} != row sum of a"

    def Ac(v):
        return [sum(A[i][j] * v[j] for j in range(s)) for i in range(s)]

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v))

    conditions = [(1, dot(b, [1.0] * s), 1.0)]
    conditions += [(2, dot(b, c), 1 / 2)]
    c2 = [x * x for x in c]
    conditions += [(3, dot(b, c2), 1 / 3), (3, dot(b, Ac(c)), 1 / 6)]
    c3 = [x**3 for x in c]
    bc = [bi * ci for bi, ci in zip(b, c)]
    conditions += [(4, dot(b, c3), 1 / 4), (4, dot(bc, Ac(c)), 1 / 8), (4, dot(b, Ac(c2)), 1 / 12),
                   (4, dot(b, Ac(Ac(c))), 1 / 24)]
    for order, got, want in conditions:
        if order <= tab.order:
            assert math.isclose(got, want, abs_tol=1e-14), (name, order, got, want)
    # The scheme is not of a higher order than claimed (for orders we can check).
    if tab.order < 4:
        higher = [(got, want) for order, got, want in conditions if order == tab.order + 1]
        assert any(not math.isclose(got, want, abs_tol=1e-12) for got, want in higher)


def test_tableau_validation():
    with pytest.raises(ValueError, match="stages"):
        ButcherTableau("bad", 1, a=((),), b=(0.5, 0.5), c=(0.0,))
    with pytest.raises(ValueError, match="row 1"):
        ButcherTableau("bad", 2, a=((), (0.5, 0.5)), b=(0.5, 0.5), c=(0.0, 1.0))


def test_get_scheme_unknown_lists_valid_names():
    with pytest.raises(ValueError, match="scheme") as info:
        get_scheme("foo")
    assert "'foo'" in str(info.value) and "rk4" in str(info.value)
    assert get_scheme("rk4") is SCHEMES["rk4"]


def test_solver_name_helpers():
    names = all_solver_names()
    assert set(NOMINAL) <= set(names)
    assert {"dopri5", "bosh3", "euler", "rk4"} <= set(names)
    assert names == sorted(set(names))
    assert is_adaptive("dopri5") and not is_adaptive("rk4") and not is_adaptive("euler")


def test_register_scheme_makes_a_custom_tableau_usable(monkeypatch, A64, x64):
    # Kutta's 3/8 rule: a 4th-order scheme with different coefficients from rk4.
    tab = ButcherTableau(
        "rk38", 4, a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
        c=(0.0, 1 / 3, 2 / 3, 1.0),
    )
    assert "rk38" not in SCHEMES
    monkeypatch.setitem(SCHEMES, "rk38", None)  # removes the entry again after the test
    assert odenet.register_scheme(tab) is tab
    assert get_scheme("rk38") is tab
    stack = ResidualStack(LinearField(A64), steps=16, scheme="rk38")
    err = (stack(x64) - linear_exact(A64, x64, 1.0)).abs().max().item()
    assert stack.nfe == 64
    assert err < 1e-5


def test_stage_times_shape_and_values():
    tab = SCHEMES["rk4"]
    t = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    h = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    st = stage_times(tab, t, h)
    assert st.shape == (3, 4)
    expected = torch.tensor(
        [[0.0, 0.125, 0.125, 0.25], [0.25, 0.375, 0.375, 0.5], [0.5, 0.75, 0.75, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(st, expected, rtol=0, atol=1e-15)


def test_rk_step_euler_is_one_residual_block():
    field = LinearField(torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    out = rk_step(field, [torch.tensor(0.0)], x, 0.1, SCHEMES["euler"])
    torch.testing.assert_close(out, x + 0.1 * field(0.0, x), rtol=0, atol=1e-15)
    # One field call per stage, and a tensor h gives the same result as a float h.
    field.calls = 0
    times = list(torch.zeros(4, dtype=torch.float64).unbind())
    a = rk_step(field, times, x, 0.1, SCHEMES["rk4"])
    assert field.calls == 4
    b = rk_step(field, times, x, torch.tensor(0.1, dtype=torch.float64), SCHEMES["rk4"])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_rk_step_rk4_matches_hand_written_classical_step():
    torch.manual_seed(3)
    field = TimeScaledLinearField(torch.randn(3, 3, dtype=torch.float64))
    x = torch.randn(2, 3, dtype=torch.float64)
    t, h = 0.3, 0.2
    k1 = field(t, x)
    k2 = field(t + h / 2, x + h / 2 * k1)
    k3 = field(t + h / 2, x + h / 2 * k2)
    k4 = field(t + h, x + h * k3)
    want = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    tab = SCHEMES["rk4"]
    times = [torch.tensor(t + ci * h, dtype=torch.float64) for ci in tab.c]
    torch.testing.assert_close(rk_step(field, times, x, h, tab), want, rtol=0, atol=1e-14)


# --- convergence orders ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NOMINAL))
def test_convergence_order_linear_field(name, A64, x64):
    tab = SCHEMES[name]
    assert tab.order == NOMINAL[name]
    field = LinearField(A64)
    exact = linear_exact(A64, x64, 1.0)
    steps = STEP_RANGES[tab.order]
    with torch.no_grad():
        errors = [(ResidualStack(field, n, scheme=name)(x64) - exact).abs().max().item() for n in steps]
    assert all(e > 1e-13 for e in errors), errors  # above roundoff: the fit measures truncation error
    assert errors == sorted(errors, reverse=True), errors
    order = observed_order(steps, errors)
    assert abs(order - tab.order) < 0.3, (name, order, errors)


@pytest.mark.parametrize("name", sorted(NOMINAL))
def test_convergence_order_non_autonomous_field(name, A64, x64):
    """dx/dt = cos(t) A x: the stage times c_i matter (a scheme evaluated at t_k only drops to order 1)."""
    tab = SCHEMES[name]
    field = TimeScaledLinearField(A64, w=1.0)
    T = 1.0
    exact = field.exact(x64, T)
    steps = STEP_RANGES[tab.order]
    with torch.no_grad():
        errors = [(ResidualStack(field, n, T=T, scheme=name)(x64) - exact).abs().max().item() for n in steps]
    assert all(e > 1e-13 for e in errors), errors
    order = observed_order(steps, errors, T=T)
    assert abs(order - tab.order) < 0.3, (name, order, errors)


def test_wrong_stage_times_break_the_order():
    """Sanity check of the non-autonomous test: rk4 with all c_i = 0 is only first order there."""
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=torch.float64) * 0.5
    field = TimeScaledLinearField(A)
    x0 = torch.randn(4, 3, dtype=torch.float64)
    tab = SCHEMES["rk4"]
    steps = [8, 16, 32, 64]
    errors = []
    for n in steps:
        h, x = 1.0 / n, x0
        for k in range(n):
            x = rk_step(field, [torch.tensor(k * h, dtype=torch.float64)] * 4, x, h, tab)
        errors.append((x - field.exact(x0, 1.0)).abs().max().item())
    assert abs(observed_order(steps, errors) - 1) < 0.3


def test_convergence_with_learned_step_sizes_at_uniform_init(A64, x64):
    """learn_steps=True starts from uniform steps: same solution as the fixed-step stack."""
    field = TimeScaledLinearField(A64)
    for name in ("euler", "rk4"):
        fixed = ResidualStack(field, 8, scheme=name)(x64)
        learned = ResidualStack(field, 8, scheme=name, learn_steps=True).double()(x64)
        torch.testing.assert_close(learned, fixed, rtol=0, atol=1e-13)


# --- torchdiffeq solvers --------------------------------------------------------------------------


def test_dopri5_meets_its_tolerance_on_linear_field(A64, x64):
    rtol, atol = 1e-6, 1e-8
    field = LinearField(A64)
    block = ODEBlock(field, solver="dopri5", rtol=rtol, atol=atol)
    exact = linear_exact(A64, x64, 1.0)
    with torch.no_grad():
        out = block(x64)
    err = (out - exact).abs()
    assert bool((err <= 10 * (atol + rtol * exact.abs())).all()), err.max().item()
    # A looser tolerance gives a larger (but still bounded) error: the tolerance is really used.
    loose = ODEBlock(field, solver="dopri5", rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        loose_err = (loose(x64) - exact).abs().max().item()
    assert loose_err > err.max().item()
    assert loose_err < 1e-2
    assert loose.nfe < block.nfe


def test_stack_with_solver_dopri5_meets_tolerance(A64, x64):
    field = LinearField(A64)
    stack = ResidualStack(field, steps=4, scheme="euler")
    ode = stack.with_solver("dopri5", rtol=1e-6, atol=1e-8)
    assert isinstance(ode, ODEBlock) and ode.solver == "dopri5"
    exact = linear_exact(A64, x64, 1.0)
    with torch.no_grad():
        euler_err = (stack(x64) - exact).abs().max().item()
        ode_err = (ode(x64) - exact).abs()
    assert bool((ode_err <= 10 * (1e-8 + 1e-6 * exact.abs())).all()), ode_err.max().item()
    assert euler_err > 1e-3  # the 4-step ResNet is a coarse approximation of the same ODE


def test_dopri5_non_autonomous_field(A64, x64):
    field = TimeScaledLinearField(A64)
    T = 1.5
    block = ODEBlock(field, T=T, solver="dopri5", rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        err = (block(x64) - field.exact(x64, T)).abs().max().item()
    assert err < 1e-7


def test_torchdiffeq_euler_equals_euler_stack(A64, x64):
    field = TimeScaledLinearField(A64)
    stack = ResidualStack(field, steps=8, scheme="euler")
    ode = ODEBlock(field, solver="euler", step_size=1 / 8)
    with torch.no_grad():
        torch.testing.assert_close(ode(x64), stack(x64), rtol=0, atol=1e-12)
    assert ode.nfe == 8


@pytest.mark.parametrize(("solver", "tight"), [("bosh3", 1e-7), ("dopri8", 1e-7), ("adaptive_heun", 1e-6)])
def test_other_adaptive_solvers_converge_with_tolerance(solver, tight, A64, x64):
    exact = linear_exact(A64, x64, 1.0)
    errors, nfes = [], []
    for rtol in (1e-4, tight):
        block = ODEBlock(LinearField(A64), solver=solver, rtol=rtol, atol=rtol / 100)
        with torch.no_grad():
            errors.append((block(x64) - exact).abs().max().item())
        nfes.append(block.nfe)
    # Looser than the tolerance: torchdiffeq's last step passes T and the output there is interpolated;
    # for dopri8 and bosh3 that interpolant, not the step, dominates the error (~1e-5 at rtol=1e-7).
    assert errors[1] < 1e-4
    assert errors[1] < errors[0]
    assert nfes[1] > nfes[0]
