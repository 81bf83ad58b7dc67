"""Learn a spiral's dynamics from one observed trajectory with an ``odenet.ODEBlock``.

The setting of torchdiffeq's ``examples/ode_demo.py`` (this script is written anew for odenet's API): a
2-D state follows ``dx/dt = x^3 A`` with ``A = [[-0.1, 2.0], [-2.0, -0.1]]`` (``x^3`` elementwise, ``x`` a
row vector) from ``x(0) = (2, 0)``, observed at 1,000 times on ``[0, 25]``. A field ``F(t, x) = MLP(x^3)``
is fitted by Adam on random short windows of the observations: each window starts at its own observed
state and *its own start time* (``ODEBlock.trajectory(x_s, times[s : s + window])``), and the loss is the
mean absolute error over the window. ``main`` returns the same loss on fixed evaluation windows (and,
with ``--log-every``, prints the error of the whole trajectory integrated from ``x(0)``, which torchdiffeq's
demo plots: it needs far longer training to become small, since errors grow over 25 time units).

    python examples/spiral_dynamics.py --iterations 300
    python examples/spiral_dynamics.py --iterations 300 --solver dopri5

The default solver is odenet's classical ``rk4`` on torchdiffeq's fixed grid with the observations'
spacing (fast and deterministic); any adaptive torchdiffeq method works too (``--solver dopri5``, at
odenet's default tolerances ``rtol=1e-3``, ``atol=1e-4``).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

import odenet
from odenet.solvers import ADAPTIVE_SOLVERS

#: The true dynamics' matrix: ``dx/dt = x^3 A``.
TRUE_A = ((-0.1, 2.0), (-2.0, -0.1))
X0 = (2.0, 0.0)


class CubicDynamics(nn.Module):
    """The true field ``F(t, x) = x^3 A`` (no parameters)."""

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        self.register_buffer("A", A)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return (x**3) @ self.A


class CubicMLP(nn.Module):
    """A learned field on cubic features: ``F(t, x) = W2 tanh(W1 x^3 + b1) + b2`` (autonomous)."""

    def __init__(self, dim: int = 2, hidden: int = 50) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.1)
                nn.init.zeros_(layer.bias)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.net(x**3)


def observe(n_times: int = 1000, t_end: float = 25.0) -> tuple[Tensor, Tensor]:
    """``(times, states)``: the true trajectory from ``X0`` at ``n_times`` equal times on ``[0, t_end]``,
    states shaped ``(n_times, 1, 2)``, solved by dopri5 at torchdiffeq's default tolerances."""
    true = odenet.ODEBlock(
        CubicDynamics(torch.tensor(TRUE_A)), T=t_end, solver="dopri5",
        rtol=odenet.ODEBlock.TORCHDIFFEQ_RTOL, atol=odenet.ODEBlock.TORCHDIFFEQ_ATOL,
    )
    times = torch.linspace(0.0, t_end, n_times)
    with torch.no_grad():
        states = true.trajectory(torch.tensor([X0]), times)
    return times, states


def window_loss(block: odenet.ODEBlock, times: Tensor, states: Tensor, starts: list[int], window: int) -> Tensor:
    """Mean absolute error over windows of ``window`` observations: each window is integrated from its own
    observed state ``states[s]`` at its own start time ``times[s]``."""
    return torch.stack([
        (block.trajectory(states[s], times[s : s + window]) - states[s : s + window]).abs().mean() for s in starts
    ]).mean()


def trajectory_loss(block: odenet.ODEBlock, times: Tensor, states: Tensor) -> float:
    """Mean absolute error of the whole trajectory that ``block``'s field integrates from ``states[0]``
    (what torchdiffeq's demo plots: small only once the field has learned the dynamics well enough for
    errors not to grow over 25 time units)."""
    with torch.no_grad():
        return float((block.trajectory(states[0], times) - states).abs().mean())


def make_block(field: nn.Module, solver: str, times: Tensor) -> odenet.ODEBlock:
    """An ODEBlock on ``field``: a fixed-grid method steps at the observations' spacing."""
    T = float(times[-1])
    if solver in ADAPTIVE_SOLVERS:
        return odenet.ODEBlock(field, T=T, solver=solver)
    return odenet.ODEBlock(field, T=T, solver=solver, step_size=float(times[1] - times[0]))


def main(
    iterations: int = 300,
    seed: int = 0,
    batch_size: int = 8,
    window: int = 10,
    lr: float = 1e-2,
    solver: str = "rk4",
    log_every: int = 0,
) -> float:
    """Train for ``iterations`` Adam steps on ``batch_size`` random windows of ``window`` observations each.

    Returns the final loss: the mean absolute error over fixed evaluation windows (every 50th start time,
    each integrated from its own observed state and start time); ``iterations=0`` gives the untrained
    field's. With ``log_every``, also prints progress and the whole trajectory's error before and after.
    """
    if iterations < 0 or batch_size < 1 or window < 2:
        raise ValueError(f"need iterations >= 0, batch_size >= 1 and window >= 2, got {iterations}, {batch_size}, "
                         f"{window}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    times, states = observe()
    evaluation = list(range(0, len(times) - window + 1, window - 1))  # consecutive windows tile the trajectory
    field = CubicMLP()
    block = make_block(field, solver, times)
    optimizer = torch.optim.Adam(field.parameters(), lr=lr)

    def evaluate() -> float:
        with torch.no_grad():
            return float(window_loss(block, times, states, evaluation, window))

    initial = evaluate()
    if log_every:
        print(f"iteration 0: evaluation loss {initial:.5f}, whole-trajectory loss "
              f"{trajectory_loss(block, times, states):.4f}")
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        starts = torch.randint(0, len(times) - window + 1, (batch_size,), generator=generator).tolist()
        loss = window_loss(block, times, states, starts, window)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log_every and it % log_every == 0:
            print(f"iteration {it}: batch loss {loss.item():.5f}, evaluation loss {evaluate():.5f} "
                  f"({time.perf_counter() - start:.1f} s)")
    final = evaluate()
    if log_every:
        print(f"evaluation loss {initial:.5f} -> {final:.5f} after {iterations} iterations ({solver}); "
              f"whole-trajectory loss {trajectory_loss(block, times, states):.4f}")
    return final


def cli(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per iteration")
    parser.add_argument("--window", type=int, default=10, help="observations per window")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--solver", default="rk4", help="rk4 (classical, fixed grid), dopri5, ...")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    return main(iterations=args.iterations, seed=args.seed, batch_size=args.batch_size, window=args.window,
                lr=args.lr, solver=args.solver, log_every=args.log_every)


if __name__ == "__main__":
    cli()
