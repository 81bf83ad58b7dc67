"""odenet against its peers on CPU: a hand loop, raw torchdiffeq, torchdyn, torchode (and diffrax when JAX is there).

Run from the repository root::

    python benchmarks/peers.py            # full run, about 2 minutes on 2 shared cores
    python benchmarks/peers.py --quick    # smoke run, a few seconds (no compiled row unless --compile)

Two solves of one MLP field (tanh, two hidden layers) on [0, 1], forward + backward of a scalar loss, batch 128,
at two sizes (small: dim 3, hidden 32; medium: dim 64, hidden 256):

* fixed-step Euler, N = 32: the hand loop ``x = x + h * field(t_k, x)``, ``ResidualStack(steps=32)`` eager and
  compiled (``block.compile()``, the whole solve), ``torchdiffeq.odeint(method="euler", step_size=h)``,
  ``torchdyn.numerics.odeint(solver="euler")`` on the 33-point grid, torchode's ``Euler`` with a fixed step;
* dopri5 at rtol 1e-3, atol 1e-4 (backprop through the solver): ``ODEBlock``, ``torchdiffeq.odeint``,
  torchdyn, torchode (``IntegralController``; its step sizes are per sample).

The contenders of a case are timed in the same process, interleaved call by call after a warm-up (the method of
``benchmarks/overhead.py``, ``benchmarks/_timing.py``); each time is the median per call, and every ratio is over
the hand Euler loop of the same size, timed in the same rounds. NFE counts the field's (batched) calls of one
forward; for dopri5 the table also gives the time per field evaluation. A peer that is not installed is skipped
with one line (``pip install -e .[bench]`` and ``pip install --no-deps torchdyn``: see pyproject.toml).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._timing import interleaved  # noqa: E402
from odenet import MLPField, ODEBlock, ResidualStack  # noqa: E402

T, STEPS, BATCH, RTOL, ATOL = 1.0, 32, 128, 1e-3, 1e-4
SIZES = {"small": (3, 32), "medium": (64, 256)}  # dim, hidden
COMPILED = "odenet ResidualStack compiled"


@dataclass
class Result:
    name: str
    ms: float
    nfe: int | None
    note: str = ""


@dataclass
class Case:
    title: str
    hand_ms: float
    rows: list[Result] = dc_field(default_factory=list)
    rounds: int = 0


def _peer(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except Exception:
        return None


class Counting(nn.Module):
    """The field, its calls counted (used once per contender, outside the timing, for the NFE)."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field, self.calls = field, 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.calls += 1
        return self.field(t, x)


def _nfe(make: Callable[[nn.Module], Callable[[], Tensor]], field: nn.Module) -> int:
    counting = Counting(field)
    with torch.no_grad():
        make(counting)()
    return counting.calls


def _fwd_bwd(solve: Callable[[], Tensor]) -> Callable[[], None]:
    def run() -> None:
        solve().square().mean().backward()

    return run


def contenders(kind: str, field: nn.Module, x: Tensor, compiled: ResidualStack | None
               ) -> tuple[list[tuple[str, Callable[[nn.Module], Callable[[], Tensor]]]], list[str]]:
    """(name, make(field) -> solve) of every available contender of ``kind`` (euler | dopri5), and the skipped."""
    h, n = T / STEPS, x.shape[0]
    grid = torch.linspace(0, T, STEPS + 1)
    span = torch.tensor([0.0, T])
    out: list[tuple[str, Callable[[nn.Module], Callable[[], Tensor]]]] = []
    skipped: list[str] = []

    def hand(f: nn.Module) -> Callable[[], Tensor]:
        def solve() -> Tensor:
            y = x
            for k in range(STEPS):
                y = y + h * f(grid[k], y)
            return y

        return solve

    out.append(("hand loop (euler)", hand))
    if kind == "euler":
        out.append(("odenet ResidualStack", lambda f: _call(ResidualStack(f, steps=STEPS, T=T), x)))
        if compiled is not None:  # compiled on ``field``: its NFE is read from the block
            out.append((COMPILED, lambda f: _call(compiled, x)))
        out.append(("torchdiffeq odeint", lambda f: lambda: torchdiffeq.odeint(
            f, x, span, method="euler", options=dict(step_size=h))[-1]))
    else:
        out.append(("odenet ODEBlock", lambda f: _call(ODEBlock(f, T=T, solver="dopri5", rtol=RTOL, atol=ATOL), x)))
        out.append(("torchdiffeq odeint", lambda f: lambda: torchdiffeq.odeint(
            f, x, span, rtol=RTOL, atol=ATOL, method="dopri5", options=dict(max_num_steps=10_000))[-1]))

    dyn = _peer("torchdyn.numerics")
    if dyn is None:
        skipped.append("torchdyn (not installed: pip install --no-deps torchdyn, with .[bench])")
    elif kind == "euler":
        out.append(("torchdyn odeint", lambda f: lambda: dyn.odeint(f, x, grid, solver="euler")[1][-1]))
    else:
        out.append(("torchdyn odeint", lambda f: lambda: dyn.odeint(
            f, x, span, solver="dopri5", atol=ATOL, rtol=RTOL)[1][-1]))

    tode = _peer("torchode")
    if tode is None:
        skipped.append("torchode (not installed: pip install -e .[bench])")
    else:
        def torchode(f: nn.Module) -> Callable[[], Tensor]:
            term = tode.ODETerm(f)
            if kind == "euler":
                solver = tode.AutoDiffAdjoint(tode.Euler(term=term), tode.FixedStepController())
                dt0 = torch.full((n,), h)
            else:
                solver = tode.AutoDiffAdjoint(tode.Dopri5(term=term),
                                              tode.IntegralController(atol=ATOL, rtol=RTOL, term=term))
                dt0 = None
            problem = tode.InitialValueProblem(y0=x, t_start=torch.zeros(n), t_end=torch.full((n,), T))
            return lambda: solver.solve(problem, dt0=dt0).ys[:, -1]

        out.append(("torchode", torchode))
    if _peer("diffrax") is None or _peer("jax") is None:
        skipped.append("diffrax (JAX not installed)")
    else:
        skipped.append("diffrax (installed, but not timed here: JAX's jit times differently from torch's eager)")
    return out, skipped


def _call(block: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    return lambda: block(x)


def run_case(kind: str, size: str, budget_s: float, quick: bool, compile_stack: bool) -> tuple[Case, list[str], str]:
    dim, hidden = SIZES[size]
    torch.manual_seed(0)
    field = MLPField(dim, hidden, depth=2, activation="tanh")
    x = torch.randn(BATCH, dim)
    params = list(field.parameters())
    compiled, compile_note = None, ""
    if kind == "euler" and compile_stack:
        compiled = ResidualStack(field, steps=STEPS, T=T)
        compiled.compile()
        start = time.perf_counter()
        compiled(x).square().mean().backward()
        compile_note = f"compiled stack: first call (compiling) {time.perf_counter() - start:.1f} s"
    makes, skipped = contenders(kind, field, x, compiled)
    nfes = [_nfe(make, field) if name != COMPILED else compiled.nfe for name, make in makes]  # type: ignore[union-attr]
    fns = [_fwd_bwd(make(field)) for _, make in makes]
    medians, rounds, _ = interleaved(fns, params, budget_s, min_rounds=2 if quick else 10, max_rounds=5000,
                                     warmup=1 if quick else 5)
    title = f"{kind}{f' N={STEPS}' if kind == 'euler' else f' rtol {RTOL:g} atol {ATOL:g}'}, {size} " \
            f"(dim {dim}, hidden {hidden}, batch {BATCH})"
    case = Case(title, medians[0] * 1e3, rounds=rounds)
    for (name, _), med, nfe in zip(makes, medians, nfes):
        case.rows.append(Result(name, med * 1e3, nfe))
    return case, skipped, compile_note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (a few seconds, noisy numbers)")
    parser.add_argument("--compile", action="store_true", help="time the compiled stack in --quick mode too")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads(N) (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    compile_stack = args.compile or not quick
    budget = {"small": 0.3, "medium": 0.5} if quick else {"small": 8.0, "medium": 12.0}

    print(f"odenet peers benchmark{' (--quick: smoke run, noisy)' if quick else ''}, {time.strftime('%Y-%m-%d')}")
    versions = [f"torch {torch.__version__}", f"torchdiffeq {torchdiffeq.__version__}"]
    for name in ("torchdyn", "torchode"):
        mod = _peer(name)
        if mod is not None:
            versions.append(f"{name} {getattr(mod, '__version__', '?')}")
    print(", ".join(versions) + f", python {platform.python_version()}, CPU, float32, {torch.get_num_threads()} "
          f"torch thread(s), os.cpu_count() = {os.cpu_count()}")
    print("median ms per forward+backward call, contenders interleaved; ratio: over the hand Euler loop of the "
          "same size, timed in the same rounds.\n", flush=True)

    start = time.perf_counter()
    skipped: list[str] = []
    notes: list[str] = []
    cases: list[Case] = []
    with torch.device("cpu"):
        for size in SIZES:
            for kind in ("euler", "dopri5"):
                case, skip, note = run_case(kind, size, budget[size], quick, compile_stack)
                cases.append(case)
                skipped += [s for s in skip if s not in skipped]
                if note:
                    notes.append(f"{size}: {note}")
    for line in skipped:
        print(f"skipped: {line}")
    if not compile_stack:
        print(f"skipped: {COMPILED} (--quick; add --compile)")
    print()
    print("| case | contender | NFE | ms | ratio to hand loop | µs per NFE |")
    print("|---|---|---:|---:|---:|---:|")
    for case in cases:
        for row in case.rows:
            per = f"{1e3 * row.ms / row.nfe:.0f}" if row.nfe else "—"
            print(f"| {case.title} | {row.name} | {row.nfe if row.nfe is not None else '—'} | {row.ms:.3f} | "
                  f"{row.ms / case.hand_ms:.2f}x | {per} |")
    print()
    for note in notes:
        print(note)
    print("timed rounds per case: " + ", ".join(str(c.rounds) for c in cases))
    print(f"total wall time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
