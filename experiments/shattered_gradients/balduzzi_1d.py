"""Balduzzi et al. (2017)'s own setting, as a check of the measurement: a scalar input on [-2, 2] (256 points),
ReLU layers of width 200, He init (N(0, 2/fan_in)), no training; the gradient dy/dx of the scalar output, its lag-1
autocorrelation and spectral slope (odenet.analysis.shattering), mean ± std over 5 seeds. Two variants:

- BN: batch normalisation before every ReLU (as in Balduzzi et al.'s Fig. 1), its statistics those of the 256
  points (one forward in train mode with momentum 1, then frozen: eval mode, so the points do not interact);
  zero biases;
- bias: no normalisation, biases N(0, 0.1^2) (with zero biases a ReLU net of a scalar is linear on each half-line).

Plain: ``h <- W relu(BN h)``; resnet: ``h <- h + W relu(BN h)`` (h = 1) or ``h + W relu(h) / L`` (h = 1/L).

    python experiments/shattered_gradients/balduzzi_1d.py
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from odenet.analysis import line_gradients, shattering_summary

WIDTH, DEPTHS, SEEDS = 200, (1, 2, 4, 8, 16, 24, 50), range(5)
VARIANTS = (("plain", True), ("resnet h=1", True), ("plain", False), ("resnet h=1", False), ("resnet h=1/L", False))


class Net(nn.Module):
    def __init__(self, depth: int, kind: str, bn: bool) -> None:
        super().__init__()
        self.kind, self.depth = kind, depth
        self.inp, self.out = nn.Linear(1, WIDTH), nn.Linear(WIDTH, 1)
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(depth))
        norm = (lambda: nn.BatchNorm1d(WIDTH, momentum=1.0)) if bn else nn.Identity
        self.norms = nn.ModuleList(norm() for _ in range(depth + 1))
        for lin in (self.inp, *self.layers, self.out):
            nn.init.normal_(lin.weight, std=math.sqrt(2 / lin.in_features))
            nn.init.normal_(lin.bias, std=0.0 if bn else 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for lin, norm in zip(self.layers, self.norms):
            step = lin(torch.relu(norm(h)))
            h = step if self.kind == "plain" else h + (step if self.kind == "resnet h=1" else step / self.depth)
        return self.out(torch.relu(self.norms[-1](h)))


def main() -> None:
    torch.set_num_threads(1)
    x = torch.linspace(-2.0, 2.0, 256)[:, None]
    names = [f"{kind}, {'BN' if bn else 'bias'}" for kind, bn in VARIANTS]
    results: dict[tuple[int, str], list] = {}
    for depth in DEPTHS:
        for (kind, bn), name in zip(VARIANTS, names):
            for seed in SEEDS:
                torch.manual_seed(seed)
                net = Net(depth, kind, bn).train()
                with torch.no_grad():
                    net(x)  # BN: the statistics of the 256 points
                g = line_gradients(net.eval(), x[0], x[-1], points=256).grads
                results.setdefault((depth, name), []).append(shattering_summary(g))
    for what, get in (("lag-1 autocorrelation", lambda s: s.lag1), ("spectral slope", lambda s: s.slope)):
        print(f"\n{what} (mean ± std over {len(SEEDS)} seeds)\n")
        print("| depth L | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for depth in DEPTHS:
            vals = [[get(s) for s in results[depth, n]] for n in names]
            print(f"| {depth} | " + " | ".join(f"{statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}" for v in vals)
                  + " |")


if __name__ == "__main__":
    main()
