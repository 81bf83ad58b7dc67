"""One training step of the small field, eager and compiled: which compilation closes the gap (issue 13).

Run from the repository root::

    python benchmarks/step.py            # full run, about 3 minutes on 2 shared cores (most of it compiling)
    python benchmarks/step.py --quick    # smoke run: eager contenders only, a few seconds

The model is ``benchmarks/peers.py``'s small case (MLP field 3 -> 32 -> 32 -> 3, tanh, Euler N = 32 on [0, 1],
batch 128) with a linear head (3 -> 3) and a mean-squared-error loss to a fixed target. A *training step* is
what ``Trainer.fit`` does: forward, loss, ``zero_grad``, backward, Adam ``step()``. Contenders:

* hand loop ``x = x + h * field(t_k, x)``, eager (the reference of every ratio);
* ``ResidualStack`` eager;
* ``block.compile()`` (``trainer.compile`` before this benchmark: the block's solve, its backward by AOTAutograd);
* ``torch.compile`` of forward + loss (one graph, the backward compiled with it), default options;
* the same with ``fullgraph=True, dynamic=False``; with inductor's ``cpp_wrapper`` (the graph's kernels called
  from C++, not from Python); with ``mode="max-autotune-no-cudagraphs"``;
* the best of those with the Adam step fused (``fused=True``) or compiled (``torch.compile(opt.step)``): with
  ``cpp_wrapper`` and fused Adam, it is what ``trainer.compile=true`` does (``odenet.runner.accel``:
  ``TRAINING_COMPILE``, ``fused_adam``; the block itself is compiled too, for evaluation).

Every contender is timed interleaved call by call in one process (``benchmarks/_timing.py``): median ms per step,
ratio to the hand loop of the same rounds, and the first call's seconds (compilation) of each compiled one. The
first call reads inductor's on-disk caches (``/tmp/torchinductor_$USER``): a graph compiled before, by an earlier
contender or run, compiles in about a second (warm); clear that folder for cold times.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._timing import interleaved  # noqa: E402
from odenet import MLPField, ResidualStack  # noqa: E402
from odenet.runner.accel import TRAINING_COMPILE  # noqa: E402

T, STEPS, BATCH, DIM, HIDDEN = 1.0, 32, 128, 3, 32


class Hand(nn.Module):
    """The hand Euler loop on the field, then the head."""

    def __init__(self, field: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.field, self.head = field, head
        self.grid = [torch.tensor(k * T / STEPS) for k in range(STEPS)]

    def forward(self, x: Tensor) -> Tensor:
        h = T / STEPS
        for k in range(STEPS):
            x = x + h * self.field(self.grid[k], x)
        return self.head(x)


class Stacked(nn.Module):
    """``ResidualStack`` on the field, then the head."""

    def __init__(self, field: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.block, self.head = ResidualStack(field, steps=STEPS, T=T), head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x))


def _fresh(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return MLPField(DIM, HIDDEN, depth=2, activation="tanh"), nn.Linear(DIM, DIM)


def make_step(model: nn.Module, x: Tensor, y: Tensor, compile_loss: dict[str, Any] | None = None,
              adam: str = "foreach") -> tuple[Callable[[], None], list[nn.Parameter]]:
    """A training step of ``model`` (forward, MSE loss, backward, Adam lr 1e-3): ``compile_loss`` compiles forward +
    loss with those ``torch.compile`` arguments; ``adam``: ``foreach`` (the default), ``fused`` or ``compiled``."""
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=adam == "fused" or None)

    def fwd_loss(xb: Tensor, yb: Tensor) -> Tensor:
        return nn.functional.mse_loss(model(xb), yb)

    loss_fn = torch.compile(fwd_loss, **compile_loss) if compile_loss is not None else fwd_loss
    opt_step = torch.compile(opt.step) if adam == "compiled" else opt.step

    def step() -> None:
        loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt_step()

    return step, params


def contenders(quick: bool) -> list[tuple[str, Callable[[nn.Module, nn.Module], nn.Module], dict[str, Any] | None,
                                          str]]:
    """(name, model maker, torch.compile arguments of forward + loss or None, Adam kind)."""
    full: dict[str, Any] = dict(fullgraph=True, dynamic=False)
    rows: list[tuple[str, Callable[[nn.Module, nn.Module], nn.Module], dict[str, Any] | None, str]] = [
        ("hand loop, eager", Hand, None, "foreach"),
        ("odenet ResidualStack, eager", Stacked, None, "foreach"),
    ]
    if quick:
        return rows
    rows += [
        ("block.compile() (the stack's solve)", Stacked, None, "block"),
        ("compile(forward + loss)", Stacked, {}, "foreach"),
        ("compile(forward + loss), fullgraph, dynamic=False", Stacked, full, "foreach"),
        ("  + cpp_wrapper", Stacked, {**full, "options": {"cpp_wrapper": True}}, "foreach"),
        ("  + max-autotune-no-cudagraphs", Stacked, {**full, "mode": "max-autotune-no-cudagraphs"}, "foreach"),
        ("  + cpp_wrapper, fused Adam (what trainer.compile does)", Stacked, TRAINING_COMPILE, "fused"),
        ("  + cpp_wrapper, compiled Adam step", Stacked, {**full, "options": {"cpp_wrapper": True}}, "compiled"),
        ("hand loop, compile(forward + loss), cpp_wrapper", Hand, {**full, "options": {"cpp_wrapper": True}},
         "foreach"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="eager contenders only, a few rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch._dynamo import config as dynamo_config
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    start = time.perf_counter()
    torch.manual_seed(1)
    x, y = torch.randn(BATCH, DIM), torch.randn(BATCH, DIM)
    names, steps, params, compile_s = [], [], [], []
    for name, maker, compile_loss, adam in contenders(args.quick):
        field, head = _fresh()
        model = maker(field, head)
        if adam == "block":
            model.block.compile()
            adam = "foreach"
        step, ps = make_step(model, x, y, compile_loss, adam)
        t0 = time.perf_counter()
        step()  # the first call compiles
        compile_s.append(time.perf_counter() - t0)
        names.append(name), steps.append(step), params.extend(ps)
    medians, rounds, _ = interleaved(steps, params, 1.0 if args.quick else args.budget, 3 if args.quick else 30,
                                     100_000, 3 if args.quick else 20)
    print(f"odenet training-step benchmark, {time.strftime('%Y-%m-%d')}: torch {torch.__version__}, "
          f"{platform.machine()}, python {platform.python_version()}, {torch.get_num_threads()} torch thread(s), "
          f"os.cpu_count() = {os.cpu_count()}")
    print(f"small field (dim {DIM}, hidden {HIDDEN}, tanh), Euler N = {STEPS}, batch {BATCH}, linear head, MSE, "
          f"Adam; median ms per training step over {rounds} interleaved rounds\n")
    print("| contender | ms per step | ratio to hand loop | first call (s) |\n|---|---:|---:|---:|")
    for name, med, first in zip(names, medians, compile_s):
        print(f"| {name} | {med * 1e3:.3f} | {med / medians[0]:.2f}x | {first:.1f} |")
    print(f"\ntotal wall time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
