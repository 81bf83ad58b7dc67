"""Shared fields and helpers for the odenet test suite."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn

# Make ``import odenet`` work from a plain ``pytest`` run without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

# The tests use tiny tensors: one intra-op thread is fastest, and it keeps the suite fast on a
# loaded machine (with 2 threads, OpenMP spin-waiting can make a tiny conv ~1000x slower).
torch.set_num_threads(1)


class LinearField(nn.Module):
    """``F(t, x) = x A^T``, i.e. ``dx/dt = A x`` per row; counts its own calls."""

    def __init__(self, A: Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.calls = 0

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        self.calls += 1
        return x @ self.A.T


class TimeScaledLinearField(nn.Module):
    """``F(t, x) = cos(w t) x A^T``: non-autonomous, exact solution ``x0 expm(sin(w T)/w A)^T``."""

    def __init__(self, A: Tensor, w: float = 2.0) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.w = w

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return torch.cos(self.w * torch.as_tensor(t, dtype=x.dtype)) * (x @ self.A.T)

    def exact(self, x0: Tensor, T: float) -> Tensor:
        return x0 @ torch.linalg.matrix_exp(self.A.detach() * (np.sin(self.w * T) / self.w)).T


class CountingField(nn.Module):
    """Wraps a field and counts the calls made to it."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        self.calls += 1
        return self.field(t, x)


class ShapeChangingField(nn.Module):
    """A broken 'field' whose output drops the last feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim - 1)

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return self.lin(x)


def linear_exact(A: Tensor, x0: Tensor, T: float) -> Tensor:
    """Exact solution of ``dx/dt = A x`` at ``T`` for row states ``x0``."""
    return x0 @ torch.linalg.matrix_exp(A * T).T


def observed_order(steps: list[int], errors: list[float], T: float = 1.0) -> float:
    """Least-squares slope of ``log(error)`` against ``log(h)``."""
    h = np.array([T / n for n in steps])
    return float(np.polyfit(np.log(h), np.log(np.array(errors)), 1)[0])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def A64() -> Tensor:
    """A fixed, well-conditioned 4x4 system matrix (mildly contracting, rotating) in float64."""
    g = torch.Generator().manual_seed(1234)
    M = torch.randn(4, 4, generator=g, dtype=torch.float64)
    return 1.5 * M / torch.linalg.matrix_norm(M, ord=2) - 0.3 * torch.eye(4, dtype=torch.float64)


@pytest.fixture
def x64() -> Tensor:
    g = torch.Generator().manual_seed(99)
    return torch.randn(5, 4, generator=g, dtype=torch.float64)


# Smoke sweeps run only in the slow step (`pytest -m slow`), to keep the default suite short: each repeats
# machinery the default suite covers with other experiments or in-process tests (the image models train in
# tests/test_images.py on files the tests write; the dynamics report has unit tests).
SLOW_SWEEPS = {"augmentation", "block_lesion", "block_lesion_mnist1d", "cifar10_odenet", "degradation",
               "degradation_he", "depth_smoothness", "gradient_flow", "identity_mapping", "learned_steps",
               "loss_landscape", "mnist5k_odenet", "mnist_odenet", "nested_growth", "regularization",
               "shattered_gradients", "step_adaptation_ott", "step_size_ablation_ott"}


def sweep_params(names):
    """``names`` as pytest parameters, those in ``SLOW_SWEEPS`` marked ``slow``."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SWEEPS else n for n in names]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """``smoke_sweep(name) -> (process, sweep_dir)``: ``+experiment=name +debug=smoke seed=0`` run once per session.

    Two jobs at a time through the joblib launcher; every test that inspects an experiment's smoke
    outputs shares the one run.
    """
    import subprocess

    runs: dict[str, tuple[subprocess.CompletedProcess, object]] = {}

    def run(name: str):
        if name not in runs:
            sweep = tmp_path_factory.mktemp(name) / "sweep"
            proc = subprocess.run(
                [sys.executable, "-m", "odenet.run", f"+experiment={name}", "+debug=smoke", "trainer.progress=false",
                 "seed=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
                 "hydra.callbacks.report.plots=always"],
                cwd=sweep.parent, capture_output=True, text=True, timeout=300,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            runs[name] = (proc, sweep)
        return runs[name]

    return run
