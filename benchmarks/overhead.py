"""Per-call overhead of odenet's blocks against hand-written loops and raw torchdiffeq, on CPU.

Run from the repository root::

    python benchmarks/overhead.py            # full run, about 80 s (under 2 minutes)
    python benchmarks/overhead.py --quick    # smoke run, a few seconds

Every case times forward + backward of a scalar loss. The contenders of a case are measured in
the same process, interleaved call by call (baseline, odenet, baseline, odenet, ... with the
order flipped every other round, so neither always runs first), after a warm-up; each is
reported as the median time per call, and the ratio is odenet's median over the baseline's, so
drift on a shared machine affects both alike. Gradients are reset to ``None`` between calls,
outside the timed region.

Cases:

1. ``ResidualStack(field, steps=32, scheme="euler")`` vs the hand loop
   ``for k in range(N): x = x + h * field(ts[k], x)``; reference: ``torchdiffeq.odeint``
   with ``method="euler", options=dict(step_size=h)``.
2. ``ResidualStack(field, steps=1000).trajectory(x)`` (loss on every state) vs a hand loop that
   appends every state and stacks them; reference: torchdiffeq euler on a 1001-point grid
   (slow, so timed only a few times, not interleaved).
3. ``ODEBlock(field, solver="dopri5", rtol=1e-3, atol=1e-4)`` vs ``torchdiffeq.odeint`` called
   directly on the field with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch
import torchdiffeq
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._timing import interleaved, repeated  # noqa: E402
from odenet import MLPField, ODEBlock, ResidualStack  # noqa: E402

T = 1.0
SIZES = {"small": (2, 32, 128), "large": (64, 256, 256)}  # dim, hidden, batch


@dataclass
class Row:
    case: str
    baseline_ms: float
    odenet_ms: float
    target: float
    ref_ms: float | None = None
    rounds: int = 0
    ref_runs: int = 0
    paired: float = float("nan")  # median over rounds of odenet / baseline within the round

    @property
    def ratio(self) -> float:
        return self.odenet_ms / self.baseline_ms

    @property
    def ref_ratio(self) -> float | None:
        return None if self.ref_ms is None else self.ref_ms / self.baseline_ms


def make_field(size: str) -> tuple[nn.Module, Tensor]:
    dim, hidden, batch = SIZES[size]
    torch.manual_seed(0)
    field = MLPField(dim, hidden, depth=2, activation="tanh")
    x = torch.randn(batch, dim)
    return field, x


# --------------------------------------------------------------------------------------- cases


def case_euler(size: str, steps: int, budget_s: float, quick: bool) -> Row:
    field, x = make_field(size)
    params = list(field.parameters())
    h = T / steps
    stack = ResidualStack(field, steps=steps, T=T, scheme="euler")
    ts = torch.linspace(0, T, steps + 1)
    t_span = torch.tensor([0.0, T])

    def hand() -> None:
        y = x
        for k in range(steps):
            y = y + h * field(ts[k], y)
        y.square().mean().backward()

    def odenet() -> None:
        stack(x).square().mean().backward()

    def ref() -> None:
        y = torchdiffeq.odeint(field, x, t_span, method="euler", options=dict(step_size=h))[-1]
        y.square().mean().backward()

    (base, ours, theirs), rounds, paired = interleaved(
        [hand, odenet, ref], params, budget_s, min_rounds=2 if quick else 10, max_rounds=2000,
        warmup=1 if quick else 10,
    )
    dim, hidden, batch = SIZES[size]
    name = f"1. euler N={steps} fwd+bwd, dim {dim} hidden {hidden} batch {batch}"
    return Row(name, base * 1e3, ours * 1e3, 1.05, theirs * 1e3, rounds, rounds, paired)


def case_trajectory(size: str, steps: int, budget_s: float, ref_runs: int, quick: bool) -> Row:
    field, x = make_field(size)
    params = list(field.parameters())
    h = T / steps
    stack = ResidualStack(field, steps=steps, T=T, scheme="euler")
    ts = torch.linspace(0, T, steps + 1)

    def hand() -> None:
        y = x
        states = [y]
        for k in range(steps):
            y = y + h * field(ts[k], y)
            states.append(y)
        torch.stack(states).square().mean().backward()

    def odenet() -> None:
        stack.trajectory(x).square().mean().backward()

    def ref() -> None:
        traj = torchdiffeq.odeint(field, x, ts, method="euler", options=dict(step_size=h))
        traj.square().mean().backward()

    (base, ours), rounds, paired = interleaved(
        [hand, odenet], params, budget_s, min_rounds=1 if quick else 5, max_rounds=500,
        warmup=1 if quick else 3,
    )
    theirs = repeated(ref, params, ref_runs) if ref_runs > 0 else None
    dim, hidden, batch = SIZES[size]
    name = f"2. trajectory N={steps} fwd+bwd, dim {dim} hidden {hidden} batch {batch}"
    return Row(name, base * 1e3, ours * 1e3, 1.2, None if theirs is None else theirs * 1e3, rounds, ref_runs, paired)


def case_dopri5(size: str, budget_s: float, quick: bool) -> Row:
    field, x = make_field(size)
    params = list(field.parameters())
    block = ODEBlock(field, T=T, solver="dopri5", rtol=1e-3, atol=1e-4)

    def direct() -> None:
        y = torchdiffeq.odeint(
            field, x, torch.tensor([0.0, T]), rtol=1e-3, atol=1e-4, method="dopri5",
            options=dict(max_num_steps=10000),
        )[-1]
        y.square().mean().backward()

    def odenet() -> None:
        block(x).square().mean().backward()

    (base, ours), rounds, paired = interleaved(
        [direct, odenet], params, budget_s, min_rounds=2 if quick else 10, max_rounds=2000,
        warmup=1 if quick else 10,
    )
    dim, hidden, batch = SIZES[size]
    name = f"3. dopri5 (NFE {block.nfe}) fwd+bwd, dim {dim} hidden {hidden} batch {batch}"
    return Row(name, base * 1e3, ours * 1e3, 1.05, rounds=rounds, paired=paired)


# --------------------------------------------------------------------------------------- main


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (a few seconds, noisy numbers)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N); default: leave as is")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    quick = args.quick
    # Per-case time budgets for the interleaved rounds (seconds): about 80 s in all, under 2 minutes.
    b_small, b_large, b_traj = (0.5, 0.8, 1.2) if quick else (10.0, 15.0, 20.0)
    traj_steps = 1000
    ref_runs = 1 if quick else 2

    threads = f"{torch.get_num_threads()} ({'set by --threads' if args.threads is not None else 'torch default'})"
    print(f"odenet overhead benchmark{' (--quick: smoke run, noisy)' if quick else ''}")
    print(
        f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, python {platform.python_version()}, "
        f"CPU, float32, torch threads: {threads}, os.cpu_count() = {os.cpu_count()}"
    )
    print("Timings: median ms per forward+backward call; contenders interleaved in the same run.\n", flush=True)

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    rows: list[Row] = []
    with torch.device("cpu"):
        rows.append(case_euler("small", 32, b_small, quick))
        rows.append(case_euler("large", 32, b_large, quick))
        rows.append(case_trajectory("small", traj_steps, b_traj, ref_runs, quick))
        rows.append(case_dopri5("small", b_small, quick))
        rows.append(case_dopri5("large", b_large, quick))
    elapsed = time.perf_counter() - start

    print("| case | baseline (ms) | odenet (ms) | ratio | target | torchdiffeq ref ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ok = "ok" if row.ratio <= row.target else "MISSED"
        ref = fmt(row.ref_ratio, ".2f")
        if row.ref_ms is not None:
            ref = f"{ref}x ({row.ref_ms:.1f} ms)"
        print(
            f"| {row.case} | {row.baseline_ms:.3f} | {row.odenet_ms:.3f} | {row.ratio:.3f}x | "
            f"<= {row.target:.2f}x {ok} | {ref} |"
        )
    print()
    print("baselines: 1. hand loop `x = x + h * field(ts[k], x)`; 2. the same loop appending every state, then")
    print("torch.stack; 3. torchdiffeq.odeint(field, ...) called directly. torchdiffeq ref: odeint euler with")
    print("step_size=h (case 2: on the 1001-point grid).")
    print("timed rounds per row (one call of each contender per round): " + ", ".join(str(r.rounds) for r in rows))
    print("paired ratio per row (median of odenet/baseline within a round; a drift check on the ratio): "
          + ", ".join(f"{r.paired:.3f}x" for r in rows))
    print(f"case 2 torchdiffeq ref: median of {rows[2].ref_runs} call(s), not interleaved.")
    missed = [r.case for r in rows if r.ratio > r.target]
    print("all targets met" if not missed else "targets MISSED: " + "; ".join(missed))
    if load_before is not None:
        load_after = os.getloadavg()[0]
        print(f"1-min load average: {load_before:.2f} before, {load_after:.2f} after (other processes "
              f"competing for the {os.cpu_count()} cores inflate tails and noise)")
        if max(load_before, load_after) > 0.5 * (os.cpu_count() or 1) and torch.get_num_threads() > 1:
            print("note: the machine is busy; intra-op threads then wait on each other (slow, noisy medians):"
                  " compare with --threads 1")
    print(f"total wall time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
