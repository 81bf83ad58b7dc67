"""odenet's own error-controlled Runge–Kutta solve: ``dopri5`` without torchdiffeq's per-step bookkeeping.

The method and the controller are torchdiffeq's ``dopri5`` (Dormand–Prince 5(4), FSAL): Hairer's initial step
(two field evaluations), the error ratio ``RMS(err / (atol + rtol max(|y0|, |y1|)))``, a step accepted at
ratio <= 1, the next step ``h min(ifactor, max(safety / ratio^(1/5), dfactor))`` (``dfactor`` 1 after an
accepted step), ``min_step`` / ``max_step`` clamps, and each output time read off the quartic interpolant of
the step that passes it (no step is shortened to land on it). So it takes torchdiffeq's steps and field
evaluations (tests compare both on the same problems). What differs is the cost: times and the controller run
in Python floats (double precision, as torchdiffeq's float64 time tensors), a stage sum is one fused op per
term, the interpolant is formed only for a step that passes an output time, and the controller is outside
autograd (torchdiffeq differentiates through its initial step choice, rtqichen/torchdiffeq#284; gradients
agree to the size of that term), and the stages at the step's end are evaluated at its end time itself (torchdiffeq
takes the float just below it, which matters only to a field that jumps in ``t``). ``benchmarks/adaptive.py``
measures the difference.

``ODEBlock(..., backend="odenet")`` solves with this; the library layer, pure torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .solvers import combine

__all__ = ["BACKENDS", "DOPRI5", "EMBEDDED_PAIRS", "OPTIONS", "AdaptiveSolveError", "EmbeddedPair", "Steps",
           "check_backend", "odeint", "odeint_members"]

Field = Callable[[Tensor, Tensor], Tensor]
Norm = Callable[[Tensor], Tensor]


class AdaptiveSolveError(RuntimeError):
    """The solve could not go on: ``kind`` is ``max_steps``, ``underflow`` or ``non-finite``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class EmbeddedPair:
    """An explicit Runge–Kutta pair whose last stage is evaluated at the new state (first same as last).

    ``a[i]``: stage ``i``'s weights (row ``-1`` is the solution's ``b``); ``c``: stage times; ``e``: the error
    weights ``b - b_hat``; ``mid``: the weights of the state at the step's midpoint (for the interpolant);
    ``order``: the order of the propagated solution (the controller's exponent is ``1 / order``).
    """

    name: str
    order: int
    a: tuple[tuple[float, ...], ...]
    c: tuple[float, ...]
    e: tuple[float, ...]
    mid: tuple[float, ...]


DOPRI5 = EmbeddedPair(
    "dopri5", 5,
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    e=(35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
       -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60),
    # Shampine's dense output at the midpoint (Hairer, Norsett & Wanner, II.6), halved: y_mid = y0 + h sum mid_i k_i
    mid=(6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
         187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2),
)

#: The pairs this solve has, by solver name.
EMBEDDED_PAIRS: dict[str, EmbeddedPair] = {"dopri5": DOPRI5}


#: Who integrates: torchdiffeq, or odenet's own solve (its solvers: ``EMBEDDED_PAIRS``).
BACKENDS: tuple[str, ...] = ("torchdiffeq", "odenet")
#: The ``options`` odenet's own solve reads.
OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "norm")


def check_backend(backend: Any, solver: str, adjoint: bool, options: dict[str, Any]) -> str:
    """``ODEBlock``'s ``backend`` (one of ``BACKENDS``), checked against what this solve does: its solvers, no adjoint,
    its options (``OPTIONS``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "odenet":
        bad = [k for k in options if k not in OPTIONS]
        for refused, why in (
            (solver not in EMBEDDED_PAIRS, f"solves {sorted(EMBEDDED_PAIRS)} only, not "
             f"solver={solver!r}"),
            (adjoint, "backpropagates through its steps: it has no adjoint=True"),
            (bool(bad), f"reads the options {list(OPTIONS)} only, not {bad}"),
        ):
            if refused:
                raise ValueError(f"backend='odenet' {why}; use backend='torchdiffeq' for that")
    return str(backend)


def rms_norm(x: Tensor) -> Tensor:
    """The root mean square of ``x`` (torchdiffeq's default error norm of a tensor state)."""
    return torch.linalg.vector_norm(x) / math.sqrt(x.numel())


def _interpolate(y0: Tensor, y1: Tensor, ymid: Tensor, f0: Tensor, f1: Tensor, h: float, x: float) -> Tensor:
    """The quartic through ``y0``, ``ymid``, ``y1`` with slopes ``f0``, ``f1`` at the fraction ``x`` of the step."""
    if x == 1.0:
        return y1
    a = 2 * h * (f1 - f0) - 8 * (y1 + y0) + 16 * ymid
    b = h * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * ymid
    c = h * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * ymid
    return y0 + x * (h * f0 + x * (c + x * (b + x * a)))


@dataclass
class Steps:
    """One problem's record of a solve: field evaluations, accepted step sizes in order, rejected steps."""

    nfe: int = 0
    accepted: list[float] = dataclasses.field(default_factory=list)
    rejected: int = 0


def odeint(
    field: Field,
    y0: Tensor,
    times: Sequence[float],
    *,
    rtol: float,
    atol: float,
    pair: EmbeddedPair = DOPRI5,
    max_steps: int = 10_000,
    min_step: float = 0.0,
    max_step: float = math.inf,
    first_step: float | None = None,
    safety: float = 0.9,
    ifactor: float = 10.0,
    dfactor: float = 0.2,
    norm: Norm | None = None,
) -> Tensor:
    """The states at ``times`` (strictly monotone; ``y0`` is the state at ``times[0]``), shape
    ``(len(times), *y0.shape)``, as ``torchdiffeq.odeint(field, y0, times, method=pair.name, ...)``.

    ``field(t, y)`` gets ``t`` as a 0-d tensor of ``y0``'s dtype; ``field.callback_accept_step`` /
    ``callback_reject_step(t0, y0, dt)``, when the field has them, are called as torchdiffeq calls them.
    ``max_steps`` bounds the steps (accepted or not) between two output times. Raises
    :class:`AdaptiveSolveError` when the steps run out, a step underflows, or the error is not finite.
    """
    controls = dict(rtol=rtol, atol=atol, pair=pair, max_steps=max_steps, min_step=min_step, max_step=max_step,
                    first_step=first_step, safety=safety, ifactor=ifactor, dfactor=dfactor)
    ts = _monotone(times)
    if ts[-1] < ts[0]:  # a decreasing grid: solve dy/ds = -F(-s, y) on s = -t, increasing
        return odeint(_Reversed(field), y0, [-t for t in ts], norm=norm, **controls)  # type: ignore[arg-type]
    return _solve(field, y0, ts, False, norm or rms_norm, **controls)[0]


def odeint_members(field: Field, y0: Tensor, times: Sequence[float], *, rtol: float, atol: float,
                   pair: EmbeddedPair = DOPRI5, max_steps: int = 10_000, min_step: float = 0.0,
                   max_step: float = math.inf, first_step: float | None = None, safety: float = 0.9,
                   ifactor: float = 10.0, dfactor: float = 0.2) -> tuple[Tensor, list[Steps]]:
    """:func:`odeint` of ``K = y0.shape[0]`` independent problems at once, each with its own steps: member ``m``
    takes exactly the steps ``odeint`` takes on ``y0[m]`` (its error norm over its own entries), while the field
    is called once per stage for all of them (``t`` then has shape ``(K, 1, ...)``, one time per member; a member
    that has finished steps by 0 until the last one is done). ``times`` increasing. Returns the states
    ``(len(times), *y0.shape)`` and each member's :class:`Steps`."""
    ts = _monotone(times)
    if not ts[-1] > ts[0]:
        raise ValueError(f"odeint_members needs increasing times, got {ts}")
    return _solve(field, y0, ts, True, None, rtol=rtol, atol=atol, pair=pair, max_steps=max_steps,
                  min_step=min_step, max_step=max_step, first_step=first_step, safety=safety, ifactor=ifactor,
                  dfactor=dfactor)


def _monotone(times: Sequence[float]) -> list[float]:
    """``times`` as floats, checked strictly increasing or strictly decreasing (at least two)."""
    ts = [float(t) for t in times]
    steps = [b - a for a, b in zip(ts, ts[1:])]
    if not steps or not (all(d > 0 for d in steps) or all(d < 0 for d in steps)):
        raise ValueError(f"times must be at least two, strictly increasing or strictly decreasing, got {ts}")
    return ts


def _solve(field: Field, y0: Tensor, ts: list[float], members: bool, norm: Norm | None, *, rtol: float,
           atol: float, pair: EmbeddedPair, max_steps: int, min_step: float, max_step: float,
           first_step: float | None, safety: float, ifactor: float, dfactor: float) -> tuple[Tensor, list[Steps]]:
    """The solve of :func:`odeint` (one problem) or :func:`odeint_members` (``members``: dim 0 indexes problems).

    The controller runs per problem on Python floats; ``per`` turns the problems' floats into what the tensor
    arithmetic takes: the float itself for one problem (fused ``alpha`` ops), a ``(K, 1, ...)`` tensor for many.
    """
    k = y0.shape[0] if members else 1
    shape = (k,) + (1,) * (y0.dim() - 1)

    def per(values: list[float]) -> float | Tensor:
        return values[0] if not members else torch.tensor(values, dtype=y0.dtype, device=y0.device).view(shape)

    def stamp(values: list[float]) -> Tensor:
        return torch.tensor(values[0] if not members else values, dtype=y0.dtype, device=y0.device).view(
            () if not members else shape)

    def ratios(x: Tensor) -> list[float]:
        if not members:
            return [float(norm(x))]  # type: ignore[misc]
        return (torch.linalg.vector_norm(x.flatten(1), dim=1) / math.sqrt(x[0].numel())).tolist()

    def pick(x: Tensor, m: int) -> Tensor:
        return x[m] if members else x

    accept = None if members else getattr(field, "callback_accept_step", None)
    reject = None if members else getattr(field, "callback_reject_step", None)
    t = [ts[0]] * k
    f0 = field(stamp(t), y0)
    if first_step is not None:
        h = [float(first_step)] * k
    else:  # Hairer, Norsett & Wanner's starting step (II.4), for the error estimate's order, as torchdiffeq
        with torch.no_grad():
            scale = atol + y0.abs() * rtol
            d0, d1 = ratios(y0 / scale), ratios(f0 / scale)
        if not all(math.isfinite(a + b) for a, b in zip(d0, d1)):
            raise AdaptiveSolveError("non-finite", "non-finite values in state `y` or its derivative at the start")
        with torch.no_grad():
            h0 = [1e-6 if a < 1e-5 or b < 1e-5 else 0.01 * a / b for a, b in zip(d0, d1)]
            f1 = field(stamp([tm + hm for tm, hm in zip(t, h0)]), y0 + per(h0) * f0)
            d2 = [r / hm for r, hm in zip(ratios((f1 - f0) / scale), h0)]
        h = [min(100 * a, max(1e-6, a * 1e-3) if b <= 1e-15 and c <= 1e-15 else (0.01 / max(b, c)) ** (1 / pair.order))
             for a, b, c in zip(h0, d1, d2)]  # noqa: E501
    steps = [Steps(nfe=1 if first_step is not None else 2) for _ in range(k)]
    out: list[list[Tensor]] = [[pick(y0, m)] for m in range(k)]
    attempts, y = [0] * k, y0
    while True:
        active = [m for m in range(k) if len(out[m]) < len(ts)]
        if not active:
            break
        for m in active:  # torchdiffeq's ``while next_t > t1``: steps until one passes the next output time
            if attempts[m] >= max_steps:
                raise AdaptiveSolveError("max_steps", f"max_num_steps exceeded ({attempts[m]}>={max_steps})")
            attempts[m] += 1
            hm = h[m] if math.isfinite(h[m]) else min_step
            h[m] = min(max(hm, min_step), max_step)
            if not t[m] + h[m] > t[m]:
                raise AdaptiveSolveError("underflow", f"underflow in dt {h[m]!r}")
        hk = [h[m] if len(out[m]) < len(ts) else 0.0 for m in range(k)]  # a finished problem steps by 0
        hs = per(hk)
        # y + h sum_j a_ij k_j: one fused op per term with a float h; with one h per problem, each k_j is scaled
        # once (terms = h k_j) and the sums weight those
        scale = 1.0 if members else hs
        ks = [f0]
        terms = [f0 * hs] if members else ks
        for ci, row in zip(pair.c[1:], pair.a[1:]):
            yi = combine(y, terms, row, scale)
            ks.append(field(stamp([tm + ci * hm for tm, hm in zip(t, hk)]), yi))
            if members:
                terms.append(ks[-1] * hs)
        y1 = yi  # first same as last: the last stage is evaluated at the new state
        with torch.no_grad():
            err = combine(torch.zeros_like(y), terms, pair.e, scale)
            ratio = ratios(err / torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol))
        ok = [False] * k
        for m in active:
            steps[m].nfe += len(pair.c) - 1
            if math.isnan(ratio[m]):  # (an infinite ratio is a rejected step, shrunk by dfactor, as torchdiffeq's)
                raise AdaptiveSolveError("non-finite", f"non-finite values in state `y` (error ratio {ratio[m]})")
            ok[m] = ratio[m] <= 1 or h[m] <= min_step  # (h is clamped to max_step above)
        ymid = None
        for m in active:
            if not ok[m]:
                steps[m].rejected += 1
                if reject is not None:
                    reject(torch.tensor(t[m], dtype=torch.float64), y, torch.tensor(h[m], dtype=torch.float64))
                continue
            steps[m].accepted.append(h[m])
            if accept is not None:
                accept(torch.tensor(t[m], dtype=torch.float64), y, torch.tensor(h[m], dtype=torch.float64))
            t1 = t[m] + h[m]
            if ts[len(out[m])] <= t1:  # every output time this step passes, off its interpolant
                ymid = combine(y, terms, pair.mid, scale) if ymid is None else ymid
                while len(out[m]) < len(ts) and ts[len(out[m])] <= t1:
                    x = (ts[len(out[m])] - t[m]) / h[m]
                    out[m].append(_interpolate(pick(y, m), pick(y1, m), pick(ymid, m), pick(ks[0], m),
                                               pick(ks[-1], m), h[m], x))
                attempts[m] = 0
            t[m] = t1
        if all(ok[m] for m in active) and len(active) == k:
            y, f0 = y1, ks[-1]
        elif any(ok):
            mask = torch.tensor(ok, device=y0.device).view(shape)
            y, f0 = torch.where(mask, y1, y), torch.where(mask, ks[-1], f0)
        for m in active:
            r = ratio[m]
            grow = 1.0 if r < 1 else dfactor  # no shrinking after an accepted step
            h[m] *= ifactor if r == 0.0 else min(ifactor, max(safety / r ** (1 / pair.order), grow))
    if not members:
        return torch.stack(out[0]), steps
    return torch.stack([torch.stack(o) for o in out], dim=1), steps


class _Reversed:
    """``-F(-s, y)``: the field in reversed time (its step callbacks get the time ``t = -s``, as torchdiffeq's)."""

    def __init__(self, field: Field) -> None:
        self.field = field
        for name in ("callback_accept_step", "callback_reject_step"):
            callback = getattr(field, name, None)
            if callback is not None:
                setattr(self, name, lambda t0, y0, dt, callback=callback: callback(-t0, y0, dt))

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return -self.field(-t, y)
