"""Images per second (forward + backward) of the image ODE-Net on one shared conv field, on GPU or CPU.

Run from the repository root::

    python benchmarks/gpu.py                         # CUDA if available (batch 128), else CPU (batch 32)
    python benchmarks/gpu.py --device cpu --batch 32 --steps 1 2 4 8 --threads 2
    python benchmarks/gpu.py --amp                    # bfloat16 autocast (stem, head, fixed-step stacks)
    python benchmarks/gpu.py --quick                  # a smoke run: tiny model and batch, a few seconds

The model is the one of ``+experiment=mnist_odenet`` (``--dataset cifar10``: 3x32x32 inputs): Chen et al.'s
downsampling stem, their conv field (norm, ReLU, conv3x3 + t, norm, ReLU, conv3x3 + t, norm; 64 channels)
and the pooling head, 208,266 parameters. One step of the timed loop is ``cross_entropy(model(x), y).backward()``
on a random batch, with gradients reset to None outside the timed region (CUDA: synchronised before the clock
stops). Rows, all on the *same* field object:

* ``ResidualStack euler N=k`` for each ``--steps`` k (a weight-tied ResNet of k blocks);
* ``ODEBlock dopri5`` (backprop through the solver's steps) and ``ODEBlock dopri5 adjoint``, rtol = atol =
  ``--tol`` (1e-3);

each against raw torchdiffeq on the same stem, field and head (``odeint(method="euler", step_size=1/k)``,
``odeint(method="dopri5")``, ``odeint_adjoint(...)``), the two timed interleaved call by call after a
warm-up (medians; ratio = odenet time / torchdiffeq time, so drift affects both alike).

Memory: the peak of ``torch.cuda.max_memory_allocated`` during one forward + backward, above what was
allocated before it (CUDA only; ``n/a`` on CPU), and, on any device, the bytes the forward saved for the
backward pass (``torch.autograd.graph.saved_tensors_hooks``), the activation memory that grows with the
number of steps (the adjoint saves only the block's output: its backward solve recomputes the states).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchdiffeq
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from odenet import ConvField, ODEBlock, ResidualStack  # noqa: E402
from odenet.models import Classifier, count_parameters, image_head, image_stem  # noqa: E402

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


class RawTorchdiffeq(nn.Module):
    """The block as a plain torchdiffeq call on the field (the baseline; ``adaptive`` for autocast)."""

    def __init__(self, field: nn.Module, method: str, tol: float, adjoint: bool, step_size: float | None) -> None:
        super().__init__()
        self.field, self.method, self.tol, self.adjoint = field, method, tol, adjoint
        self.step_size = step_size
        self.adaptive = step_size is None

    def forward(self, x: Tensor) -> Tensor:
        t = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        options = {"step_size": self.step_size} if self.step_size is not None else {}
        if self.adjoint:
            params = tuple(self.field.parameters())
            return torchdiffeq.odeint_adjoint(self.field, x, t, rtol=self.tol, atol=self.tol, method=self.method,
                                              options=options, adjoint_params=params)[-1]
        return torchdiffeq.odeint(self.field, x, t, rtol=self.tol, atol=self.tol, method=self.method,
                                  options=options)[-1]


@dataclass
class Row:
    config: str
    images_per_s: float
    ms: float
    raw_images_per_s: float
    nfe: str
    peak_mb: float | None
    saved_mb: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.raw_images_per_s / self.images_per_s  # odenet time / torchdiffeq time


def build(dataset: str, width: int, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    channels = SHAPES[dataset][0]
    stem, dim = image_stem(channels, width, 0, "downsample")
    field = ConvField(dim, width, depth=2, kernel=3, activation="relu", time="concat", groupnorm=True, groups=32,
                      preact=True)
    head = image_head(dim, 10, norm=True)
    return stem.to(device), field.to(device), head.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(model: Classifier, x: Tensor, y: Tensor, device: torch.device) -> Callable[[], float]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        for p in params:
            p.grad = None
        sync(device)
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        sync(device)
        return time.perf_counter() - start

    return step


def interleaved(
    steps: list[Callable[[], float]], budget_s: float, warmup: int, min_rounds: int
) -> tuple[list[float], int]:
    """Median seconds per call of each contender, in rounds (order flipped every other round) for ~``budget_s``."""
    for _ in range(warmup):
        for fn in steps:
            fn()
    gc.collect()
    times: list[list[float]] = [[] for _ in steps]
    deadline, rounds = time.perf_counter() + budget_s, 0
    while rounds < min_rounds or time.perf_counter() < deadline:
        order = range(len(steps)) if rounds % 2 == 0 else reversed(range(len(steps)))
        for i in order:
            times[i].append(steps[i]())
        rounds += 1
        if rounds >= 10_000:
            break
    return [statistics.median(t) for t in times], rounds


def memory(model: Classifier, x: Tensor, y: Tensor, device: torch.device) -> tuple[float | None, float]:
    """(peak CUDA MB above the baseline during one forward + backward or None, MB saved for backward)."""
    for p in model.parameters():
        p.grad = None
    saved = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    peak = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    if device.type == "cuda":
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    for p in model.parameters():
        p.grad = None
    return peak, saved / 2**20


def nfe_text(block: Any) -> str:
    backward = getattr(block, "nfe_backward", 0)
    return f"{block.nfe}" + (f" + {backward} bwd" if backward else "")


def run_row(name: str, ours: Classifier, raw: Classifier, x: Tensor, y: Tensor, device: torch.device,
            budget_s: float, warmup: int, min_rounds: int) -> Row:
    (t_ours, t_raw), rounds = interleaved([step_fn(ours, x, y, device), step_fn(raw, x, y, device)], budget_s,
                                          warmup, min_rounds)
    peak, saved = memory(ours, x, y, device)
    nfe = nfe_text(ours.block)
    batch = len(x)
    return Row(name, batch / t_ours, 1e3 * t_ours, batch / t_raw, nfe, peak, saved, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--dataset", choices=sorted(SHAPES), default="mnist", help="input shape (random images)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: 128 CUDA, 32 CPU)")
    parser.add_argument("--width", type=int, default=64, help="channels of the state and the field (64)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="ResidualStack step counts")
    parser.add_argument("--tol", type=float, default=1e-3, help="dopri5 rtol = atol (Chen et al.: 1e-3)")
    parser.add_argument("--no-ode", action="store_true", help="skip the dopri5 rows")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per row")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (adaptive blocks stay float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the field in place")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) (CPU)")
    parser.add_argument("--quick", action="store_true", help="smoke run: width 16, batch 4, one timed round")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    width = 16 if args.quick else args.width
    batch = args.batch or (4 if args.quick else 128 if device.type == "cuda" else 32)
    budget = args.budget if args.budget is not None else (0.0 if args.quick else 3.0)
    warmup, min_rounds = (1, 1) if args.quick else (3, 5)
    amp = torch.bfloat16 if args.amp else None

    stem, field, head = build(args.dataset, width, device)
    if args.compile:
        field.compile()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, *SHAPES[args.dataset], generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        name = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads, " \
               f"os.cpu_count() = {os.cpu_count()}"
    total = count_parameters(stem) + count_parameters(field) + count_parameters(head)
    print(f"odenet image benchmark{' (--quick: smoke run, noisy)' if args.quick else ''}")
    print(f"device: {name}; torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, "
          f"python {platform.python_version()}")
    print(f"model: {args.dataset} {'x'.join(map(str, SHAPES[args.dataset]))}, width {width}, {total:,} parameters; "
          f"batch {batch}; {'bfloat16 autocast' if amp else 'float32'}{'; compiled field' if args.compile else ''}; "
          f"dopri5 rtol = atol = {args.tol:g}\n", flush=True)

    rows: list[Row] = []
    start = time.perf_counter()
    for k in args.steps:
        ours = Classifier(stem, ResidualStack(field, steps=k, scheme="euler"), head, amp)
        raw = Classifier(stem, RawTorchdiffeq(field, "euler", args.tol, False, 1.0 / k), head, amp)
        rows.append(run_row(f"ResidualStack euler N={k}", ours, raw, x, y, device, budget, warmup, min_rounds))
    if not args.no_ode:
        for adjoint in (False, True):
            block = ODEBlock(field, solver="dopri5", rtol=args.tol, atol=args.tol, adjoint=adjoint)
            ours = Classifier(stem, block, head, amp)
            raw = Classifier(stem, RawTorchdiffeq(field, "dopri5", args.tol, adjoint, None), head, amp)
            label = "ODEBlock dopri5" + (" adjoint" if adjoint else "")
            rows.append(run_row(label, ours, raw, x, y, device, budget, warmup, min_rounds))
    elapsed = time.perf_counter() - start

    print("| config | images/s (fwd+bwd) | ms / batch | torchdiffeq images/s | ratio | NFE | peak memory (MB) "
          "| saved for backward (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = "n/a" if r.peak_mb is None else f"{r.peak_mb:.1f}"
        print(f"| {r.config} | {r.images_per_s:,.0f} | {r.ms:.1f} | {r.raw_images_per_s:,.0f} | {r.ratio:.3f}x | "
              f"{r.nfe} | {peak} | {r.saved_mb:.1f} |")
    print()
    print("ratio: odenet's time per batch / raw torchdiffeq's (stacks: odeint euler, step_size 1/N) on the same stem,")
    print("field and head. NFE: field evaluations of the last forward (+ the adjoint's backward solve).")
    print("peak memory: CUDA max_memory_allocated during one forward+backward above the memory before it (n/a on CPU).")
    print("timed rounds per row: " + ", ".join(str(r.rounds) for r in rows))
    if hasattr(os, "getloadavg"):
        print(f"1-min load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"total wall time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
