"""``examples/spiral_dynamics.py`` learns the spiral's dynamics on a small budget (a few seconds on one core)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import odenet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spiral_dynamics.py"


@pytest.fixture(scope="module")
def spiral():
    spec = importlib.util.spec_from_file_location("spiral_dynamics", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["spiral_dynamics"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("spiral_dynamics", None)


def test_observations_follow_the_true_dynamics(spiral):
    times, states = spiral.observe()
    assert times.shape == (1000,) and states.shape == (1000, 1, 2)
    assert float(times[0]) == 0.0 and float(times[-1]) == 25.0
    torch.testing.assert_close(states[0], torch.tensor([spiral.X0]))
    # dx/dt = x^3 A along the observations (central differences).
    A = torch.tensor(spiral.TRUE_A)
    dt = float(times[1] - times[0])
    slope = (states[2:] - states[:-2]) / (2 * dt)
    torch.testing.assert_close(slope[100:200], (states[101:201] ** 3) @ A, rtol=0, atol=1e-2)


def test_it_learns(spiral):
    initial = spiral.main(iterations=0, seed=0)
    final = spiral.main(iterations=60, seed=0, batch_size=4)
    assert final < 0.3 * initial, (initial, final)


def test_cli_windows_start_at_their_own_time(spiral, monkeypatch, capsys):
    starts: list[float] = []
    trajectory = odenet.ODEBlock.trajectory

    def spy(self, x, times=32):
        if not isinstance(times, int):
            starts.append(float(times[0]))
        return trajectory(self, x, times)

    monkeypatch.setattr(odenet.ODEBlock, "trajectory", spy)
    loss = spiral.cli(["--iterations", "2", "--batch-size", "2", "--log-every", "1", "--seed", "1"])
    assert loss > 0
    assert any(s > 0 for s in starts)  # windows integrate from their own start times, not from 0
    out = capsys.readouterr().out
    assert "iteration 2" in out and "whole-trajectory loss" in out
    with pytest.raises(ValueError, match="window >= 2"):
        spiral.main(iterations=1, window=1)
