"""dopri5 forward + backward: torchdiffeq against odenet's own solve (``ODEBlock(backend="odenet")``), and K seeds'
fields solved at once, each with its own steps (``odeint_members``, what ``trainer.ensemble`` uses) (issue 13).

Run from the repository root::

    python benchmarks/adaptive.py            # about 1 minute
    python benchmarks/adaptive.py --quick    # smoke run, a few seconds

Workloads: the small field of ``benchmarks/peers.py`` (MLP 3 -> 32 -> 32 -> 3, ``time="concat"``, relu, as
``step_size_ablation``'s Sphere2 model) and a medium one (64 -> 256 -> 256 -> 64, tanh), batch 128, dopri5 at
rtol 1e-3 / atol 1e-4 on [0, 1], one forward and backward of ``sum(x(1)^2)``. Contenders, timed interleaved call
by call in one process (``benchmarks/_timing.py``):

* raw ``torchdiffeq.odeint`` (the reference of every ratio);
* ``ODEBlock`` (torchdiffeq) and ``ODEBlock(backend="odenet")``;
* a hand Euler loop with as many field evaluations as the dopri5 solve takes: the cost of the evaluations alone,
  what no solver bookkeeping can go below;
* ``K = 3`` fields: three separate odenet solves against one ``odeint_members`` solve of the batched fields
  (stacked weights, ``torch.bmm``), each member its own steps.

Every contender's field evaluations are checked equal to torchdiffeq's before timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
import torchdiffeq
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._timing import interleaved  # noqa: E402
from odenet import MLPField, ODEBlock  # noqa: E402
from odenet.adaptive import odeint_members  # noqa: E402

RTOL, ATOL, BATCH, K = 1e-3, 1e-4, 128, 3
SIZES = {"small": (3, 32, "relu"), "medium": (64, 256, "tanh")}


class Counted(nn.Module):
    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field, self.nfe = field, 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)


class Stacked(nn.Module):
    """K MLP fields (time concat) as one: states ``(K, B, dim)``, times ``(K, 1, 1)``, weights stacked."""

    def __init__(self, fields: list[MLPField]) -> None:
        super().__init__()
        self.w = nn.ParameterList([torch.stack([f.linears[i].weight for f in fields]).detach().requires_grad_()
                                   for i in range(len(fields[0].linears))])
        self.b = nn.ParameterList([torch.stack([f.linears[i].bias for f in fields]).detach().requires_grad_()
                                   for i in range(len(fields[0].linears))])
        self.act = fields[0].act

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            x = torch.cat([x, t.expand(*x.shape[:-1], 1)], dim=-1)
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if i < len(self.w) - 1:
                x = self.act(x)
        return x


def workload(size: str, budget: float, rounds: tuple[int, int]) -> None:
    dim, hidden, act = SIZES[size]
    torch.manual_seed(0)
    fields = [MLPField(dim, hidden, 2, act, "concat") for _ in range(K)]
    x = torch.randn(K, BATCH, dim)
    times = torch.tensor([0.0, 1.0])
    counted = Counted(fields[0])
    torchdiffeq.odeint(counted, x[0], times, rtol=RTOL, atol=ATOL, method="dopri5")
    nfe = counted.nfe
    theirs = ODEBlock(fields[0], rtol=RTOL, atol=ATOL)
    ours = ODEBlock(fields[0], rtol=RTOL, atol=ATOL, backend="odenet")
    for block in (theirs, ours):
        block(x[0])
        assert block.nfe == nfe, (block.nfe, nfe)
    separate = [ODEBlock(f, rtol=RTOL, atol=ATOL, backend="odenet") for f in fields]
    stacked = Stacked(fields)
    grid = [torch.tensor(k / nfe) for k in range(nfe)]

    def raw() -> None:
        torchdiffeq.odeint(fields[0], x[0], times, rtol=RTOL, atol=ATOL, method="dopri5")[-1].square().sum().backward()

    def hand() -> None:
        y = x[0]
        for t in grid:
            y = y + (1 / nfe) * fields[0](t, y)
        y.square().sum().backward()

    def three() -> None:
        for block, xm in zip(separate, x):
            block(xm).square().sum().backward()

    def members() -> None:
        odeint_members(stacked, x, [0.0, 1.0], rtol=RTOL, atol=ATOL)[0][-1].square().sum().backward()

    contenders = {
        "torchdiffeq.odeint": raw,
        "ODEBlock (torchdiffeq)": lambda: theirs(x[0]).square().sum().backward(),
        'ODEBlock(backend="odenet")': lambda: ours(x[0]).square().sum().backward(),
        f"hand Euler loop, {nfe} evaluations": hand,
        f"{K} fields: {K} odenet solves": three,
        f"{K} fields: one odeint_members solve": members,
    }
    params = [p for f in fields for p in f.parameters()] + list(stacked.parameters())
    medians, n, _ = interleaved(list(contenders.values()), params, budget, rounds[0], rounds[1], warmup=3)
    print(f"\n{size} field (dim {dim}, hidden {hidden}, {act}), batch {BATCH}, dopri5 NFE {nfe} forward; "
          f"{n} interleaved rounds")
    print(f"{'contender':44s} {'ms / call':>10s} {'ratio':>7s}")
    for (name, _), t in zip(contenders.items(), medians):
        print(f"{name:44s} {1e3 * t:10.3f} {t / medians[0]:7.3f}")
    sep, mem = medians[4], medians[5]
    print(f"{K} fields at once / {K} separate solves: {mem / sep:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds of the small field only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, torchdiffeq {torchdiffeq.__version__}, {platform.processor() or 'cpu'}, "
          "1 thread")
    if args.quick:
        workload("small", 0.5, (2, 5))
        return
    for size in SIZES:
        workload(size, 20.0, (20, 400))


if __name__ == "__main__":
    main()
