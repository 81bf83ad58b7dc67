"""The learned_steps experiment: the adaptive-steps measurement (known answers), step-grid summaries, the step
logits' learning rate, and the experiment's smoke sweep with its report section and plot."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
from torch import Tensor, nn

import odenet
from odenet.analysis import adaptive_steps, concentration, local_step_sizes, step_shares
from odenet.models import Classifier
from odenet.reports import MAX_PNG_BYTES
from odenet.reports.learned_steps import adaptive_at, spearman
from odenet.runner import measure
from odenet.runner.build import build_optimizer
from odenet.runner.config import AnalysisConfig, load_config


class BumpField(nn.Module):
    """``F(t, x) = g(t) A x``, a rotation ``A`` and ``g = 1 + 30 exp(-((t - c) / 0.05)^2)``: fast only near ``c``."""

    def __init__(self, center: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
        self.center = center

    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype)
        return (1 + 30 * torch.exp(-(((t - self.center) / 0.05) ** 2))) * (x @ self.A.T)


class Decay(nn.Module):
    def forward(self, t: Tensor | float, x: Tensor) -> Tensor:
        return -x


@pytest.mark.parametrize("center", [0.2, 0.5, 0.8])
def test_adaptive_steps_are_smallest_where_the_field_is_fast(center):
    block = odenet.ResidualStack(BumpField(center), steps=8)
    x = torch.randn(64, 2)
    s = adaptive_steps(block, x, rtol=1e-6, atol=1e-6)
    assert s.solver == "dopri5" and s.T == 1.0
    assert sum(s.sizes) == pytest.approx(1.0, abs=1e-12)
    assert s.starts[0] == 0.0 and all(a + h == pytest.approx(b) for a, h, b in zip(s.starts, s.sizes, s.starts[1:]))
    assert s.accepted == len(s.sizes) and s.nfe >= 6 * s.accepted
    k = min(range(len(s.sizes)), key=lambda i: s.sizes[i])
    assert abs(s.starts[k] + s.sizes[k] / 2 - center) < 0.1  # the smallest step sits on the bump
    # far from the bump the steps are at least 5x larger than the smallest one (but the first: the initial
    # step guess, and the last: clipped at T)
    far = [h for a, h in zip(s.starts, s.sizes) if abs(a + h / 2 - center) > 0.25 and 0 < a and a + h < 1.0]
    assert far and min(far) > 5 * s.sizes[k]
    shares = step_shares(s.sizes, s.T)
    assert shares.index(max(shares)) == min(int(center * 3), 2) and max(shares) > 0.6
    # the model is untouched: float32 parameters, no grad kept
    assert block.field.A.dtype == torch.float32


def test_adaptive_steps_on_a_linear_field_are_uniform_inside():
    """dx/dt = -x: dopri5's relative local error is h-dependent only, so the steps between the first (the
    initial step guess) and the last (clipped at T) are equal."""
    s = adaptive_steps(odenet.ResidualStack(Decay(), steps=4), torch.randn(16, 3), rtol=1e-6, atol=1e-9)
    inner = s.sizes[1:-1]
    assert len(inner) >= 2 and max(inner) / min(inner) < 1.1
    assert s.rejected == 0


def test_adaptive_steps_of_a_classifier_and_in_float32():
    torch.manual_seed(0)
    field = odenet.MLPField(3, 16, 1, "tanh", "concat")
    model = Classifier(nn.Linear(2, 3), odenet.ResidualStack(field, steps=4, learn_steps=True), nn.Linear(3, 2))
    x = torch.randn(32, 2)
    s64 = adaptive_steps(model, x, rtol=1e-6, atol=1e-6)
    s32 = adaptive_steps(model, x, rtol=1e-4, atol=1e-4, dtype=None)
    assert sum(s64.sizes) == pytest.approx(1.0) and sum(s32.sizes) == pytest.approx(1.0, abs=1e-6)
    assert s64.accepted > s32.accepted  # a tighter tolerance takes more steps
    assert next(model.parameters()).dtype == torch.float32 and model.block.learn_steps
    with pytest.raises(ValueError, match="not adaptive"):
        adaptive_steps(model, x, solver="euler")


def test_measure_records_adaptive_steps_and_the_blocks_own_grid():
    torch.manual_seed(0)
    stack = odenet.ResidualStack(odenet.MLPField(3, 16, 1, "tanh", "concat"), steps=4, learn_steps=True)
    with torch.no_grad():
        stack.step_logits.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    model = Classifier(nn.Linear(2, 3), stack, nn.Linear(3, 2))
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
    cfg = AnalysisConfig(adaptive_steps=True, adaptive_rtol=1e-6, adaptive_atol=1e-6)
    assert measure.enabled(cfg)
    out = measure.after_training(model, x, y, nn.functional.cross_entropy, cfg)["adaptive_steps"]
    assert out["rtol"] == 1e-6 and out["solver"] == "dopri5"
    assert sum(out["step_sizes"]) == pytest.approx(1.0) and len(out["step_starts"]) == out["steps_accepted"]
    assert out["block_step_sizes"] == pytest.approx(stack.step_sizes.tolist())
    assert out["block_step_sizes"][1] > out["block_step_sizes"][3]
    json.dumps(out)  # JSON-ready
    plain = Classifier(nn.Linear(2, 3), odenet.ResidualStack(odenet.MLPField(3, 8), steps=4, shortcut=False),
                       nn.Linear(3, 2))
    failed = measure.after_training(plain, x, y, nn.functional.cross_entropy, cfg)["adaptive_steps"]
    assert "plain net" in failed["error"]


def test_step_shares_and_concentration_known_answers():
    assert step_shares([0.25] * 4, 1.0, bins=2) == pytest.approx([0.5, 0.5])
    assert step_shares([0.5, 0.25, 0.25], bins=2) == pytest.approx([1 / 3, 2 / 3])
    # [0, 0.6] is 5/9 in the first third, 4/9 in the second; [0.6, 1] 1/6 in the second, 5/6 in the third
    assert step_shares([0.6, 0.4], bins=3) == pytest.approx([5 / 18, (4 / 9 + 1 / 6) / 2, 5 / 12])
    c = concentration([0.125] * 8)
    assert c["max_over_min"] == pytest.approx(1) and c["effective_fraction"] == pytest.approx(1)
    assert c["index_thirds"] == pytest.approx([1 / 3] * 3)
    c = concentration([0.1, 0.1, 0.1, 0.7])
    assert c["max_over_min"] == pytest.approx(7) and c["max_over_uniform"] == pytest.approx(2.8)
    assert c["index_thirds"] == pytest.approx([0.1 + 0.1 / 3, 0.2 / 3 + 0.2 / 3, 0.1 / 3 + 0.7])
    assert 0.25 < c["effective_fraction"] < 1
    with pytest.raises(ValueError):
        step_shares([0.5, -0.1])


def test_local_step_sizes_drop_the_boundary_artefacts():
    """A small initial guess and a clipped last step would count as extra steps at both ends; in force are
    their neighbours' sizes, which makes this grid uniform."""
    sizes = [0.01, 0.2, 0.2, 0.2, 0.2, 0.19]
    assert local_step_sizes(sizes) == [0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert local_step_sizes([0.3, 0.7]) == [0.3, 0.7]
    raw = step_shares(sizes, 1.0)
    assert raw[0] > 0.4  # the tiny first step counts as a whole step in the first third
    assert step_shares(sizes, 1.0, local=local_step_sizes(sizes)) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="local"):
        step_shares(sizes, local=[0.2])


def test_rank_correlation_and_lookup():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 3], [5, 5, 5]) is None
    adaptive = {"step_starts": [0.0, 0.5, 0.75], "step_sizes": [0.5, 0.25, 0.25]}
    assert adaptive_at(adaptive, [0.1, 0.6, 0.9, 1.0], local=False) == [0.5, 0.25, 0.25, 0.25]
    assert adaptive_at(adaptive, [0.1, 0.6, 0.9]) == [0.25, 0.25, 0.25]  # the first step counts as the second


def test_step_logits_learn_at_their_own_scale():
    cfg = load_config(["block=learned_steps", "optimizer.lr=0.01", "optimizer.step_lr_scale=10"])
    stack = odenet.ResidualStack(odenet.MLPField(2, 8), steps=4, learn_steps=True)
    model = Classifier(nn.Identity(), stack, nn.Linear(2, 2))
    optimizer, _ = build_optimizer(cfg, model, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1])
    assert optimizer.param_groups[1]["params"] == [stack.step_logits]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    cfg.optimizer.step_lr_scale = 1.0
    assert len(build_optimizer(cfg, model, 10)[0].param_groups) == 1
    cfg.optimizer.step_lr_scale = 0.0
    with pytest.raises(ValueError, match="step_lr_scale"):
        build_optimizer(cfg, model, 10)


@pytest.mark.slow  # a 16-s sweep: the slow step (the report's tables have in-process tests)
def test_learned_steps_smoke_sweep(smoke_sweep):
    proc, sweep = smoke_sweep("learned_steps")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p.parent for p in sweep.rglob("metrics.json")]
    assert len(runs) == 6  # 2 data sets x 3 grids (seed 0)
    seen = set()
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "ok"
        a = metrics["analysis"]["adaptive_steps"]
        assert "error" not in a and sum(a["step_sizes"]) == pytest.approx(1.0) and a["rtol"] == 1e-8
        with (run / "history.csv").open(newline="") as f:
            history = list(csv.DictReader(f))
        h_cols = [c for c in history[0] if c.startswith("h_")]
        block = metrics["train"]["block"]
        seen.add((metrics["overrides"].get("learned_task"), metrics["overrides"].get("step_grid")))
        if block == "learned_steps":
            assert len(h_cols) == 16 and len(history) == 3  # log every 2 of 6 smoke iterations
            for row in history:
                assert math.fsum(float(row[c]) for c in h_cols) == pytest.approx(1.0, abs=1e-5)
            assert a["block_step_sizes"] == pytest.approx([float(history[-1][c]) for c in h_cols], rel=1e-5)
        else:
            assert block == "residual" and not h_cols and a["block_step_sizes"] == pytest.approx([1 / 16] * 16)
    assert seen == {(d, g) for d in ("sphere2", "digits") for g in ("learned", "learned_lr10", "uniform")}
    text = (sweep / "report.md").read_text()
    assert "## Learned step sizes" in text
    for data in ("sphere2", "digits"):
        for grid in ("learned", "learned, θ lr ×10", "uniform"):  # marked † when the smoke models are at chance
            assert re.search(re.escape(f"| {data} | {grid}") + r"(?: †(?: \d+/\d+)?)? \|", text), (data, grid)
    png = sweep / "learned_steps.png"
    assert png.is_file() and 0 < png.stat().st_size <= MAX_PNG_BYTES
