"""Step-size adaptation (Ott et al. 2021): the rule on scripted accuracy gaps, and its wiring into training."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from odenet.blocks import ODEBlock
from odenet.runner.adaptation import StepSizeAdaptation, StepSizeRule, grid_steps, snap_step_size
from odenet.runner.config import EvalSolverConfig, load_config
from odenet.runner.evaluate import eval_options
from odenet.runner.train import load_model, train_and_evaluate
from odenet.runner.validate import validate as check_config

SMOKE = ["+debug=smoke", "trainer.progress=false", "data=sphere2"]  # Ott et al.'s data (the primary default is digits)


def never(h: float) -> float:
    raise AssertionError(f"no larger step should be tried (asked for {h})")


# --- the rule --------------------------------------------------------------------------------------


def test_gap_above_threshold_halves_without_trying_a_larger_step():
    d = StepSizeRule(threshold=0.1).decide(0.2, gap=0.15, gap_at=never)
    assert (d.action, d.new_step_size, d.tried_step_size) == ("halve", 0.1, None)


def test_gap_within_threshold_grows_by_1_1_when_the_larger_step_passes():
    tried = []
    d = StepSizeRule(threshold=0.1).decide(0.2, gap=0.1, gap_at=lambda h: tried.append(h) or 0.05)  # 0.1: not above
    assert tried == [pytest.approx(0.22)]
    assert d.action == "grow" and d.new_step_size == pytest.approx(0.22) and d.tried_gap == 0.05


def test_growth_is_rejected_when_the_larger_step_exceeds_the_threshold():
    d = StepSizeRule(threshold=0.1).decide(0.2, gap=0.0, gap_at=lambda h: 0.125)
    assert d.action == "reject_growth" and d.new_step_size == 0.2
    assert d.tried_step_size == pytest.approx(0.22) and d.tried_gap == 0.125


def test_limits_clamp_and_stop_the_rule():
    rule = StepSizeRule(threshold=0.1, min_step_size=0.15, max_step_size=1.0)
    assert rule.decide(0.2, 0.5, never).new_step_size == 0.15  # halving clamped at the minimum
    assert rule.decide(0.15, 0.5, never).action == "at_min"
    grown = rule.decide(0.95, 0.0, lambda h: 0.0)
    assert grown.action == "grow" and grown.new_step_size == 1.0  # growth clamped at the maximum
    assert rule.decide(1.0, 0.0, never).action == "at_max"


def test_threshold_is_a_fraction():
    with pytest.raises(ValueError, match="fraction"):
        StepSizeRule(threshold=10.0)  # 10 percentage points must be written 0.1


def test_scripted_sequence_of_checks_moves_h():
    """Scripted accuracies through the training-loop side: halve, grow, reject, grow."""
    rule = StepSizeRule(threshold=0.1, min_step_size=1e-3, max_step_size=1.0)
    adapt = StepSizeAdaptation(rule, initial_step_size=0.25, every=1)
    # (train accuracy on the batch, test solver accuracy, train solver accuracy at the tried 1.1 h)
    script = iter([(0.9, 0.6, None), (0.8, 0.75, 0.78), (0.8, 0.8, 0.6), (0.7, 0.72, 0.7)])
    calls: list[tuple[str, float]] = []
    current: dict[str, float | None] = {}

    def fake_accuracy(model, solver, h, x, y):
        calls.append((solver, h))
        return (current["test"] if solver == "midpoint" else current["tried"]), 1

    adapt._accuracy = fake_accuracy  # type: ignore[method-assign]
    model = _TinyModel()
    adapt.attach(model)
    expected = [("halve", 0.125), ("grow", 0.1375), ("reject_growth", 0.1375), ("grow", 0.15125)]
    for i, (train_acc, test_acc, tried_acc) in enumerate(script, start=1):
        current.update(test=test_acc, tried=tried_acc)
        y = torch.tensor([0] * 10)
        logits = torch.zeros(10, 2)
        logits[: round(10 * (1 - train_acc)), 1] = 1.0  # a fraction train_acc of the batch predicts class 0
        d = adapt.on_iteration(i, model, torch.zeros(10, 2), y, logits, nfe=grid_steps(adapt.step_size, 1.0))
        assert d.action == expected[i - 1][0] and d.new_step_size == pytest.approx(expected[i - 1][1])
        assert adapt.step_size == pytest.approx(expected[i - 1][1])
        assert isinstance(model.block, ODEBlock) and model.block.step_size == pytest.approx(adapt.step_size)
    assert [c[0] for c in calls] == ["midpoint", "midpoint", "euler", "midpoint", "euler", "midpoint", "euler"]
    assert [d["action"] for d in adapt.decisions] == [a for a, _ in expected]
    assert adapt.summary()["halve_count"] == 1 and adapt.summary()["reject_growth_count"] == 1


class _TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from odenet import MLPField, ResidualStack

        self.stem, self.head = torch.nn.Identity(), torch.nn.Identity()
        self.block = ResidualStack(MLPField(2, 4, 1), steps=4)


def test_accuracy_factor_gives_the_authors_test_step():
    adapt = StepSizeAdaptation(StepSizeRule(), initial_step_size=0.5, accuracy_factor=50)
    assert adapt.test_step_size(0.5) == pytest.approx(0.1)  # sqrt(0.5 / 50)
    assert adapt.test_step_size(0.01) == 0.01  # sqrt(0.01 / 50) > 0.01: the same h
    assert StepSizeAdaptation(StepSizeRule(), 0.5).test_step_size(0.5) == 0.5


def test_step_sizes_near_T_over_N_snap_to_it():
    assert snap_step_size(1 / 8 * (1 + 1e-9), 1.0) == 1 / 8
    assert snap_step_size(0.1375, 1.0) == 0.1375
    assert grid_steps(0.1375, 1.0) == 8 and grid_steps(0.125, 1.0) == 8 and grid_steps(2.0, 1.0) == 1


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver=dopri5", "solver.name"),
        ("block=plain", "block"),
        ("field=mlp_untied", "untied"),
        ("adaptation.threshold=10", "fraction"),
        ("adaptation.test_solver=dopri5", "test_solver"),
        ("adaptation.every=0", "every"),
    ],
)
def test_bad_adaptation_config_fails_at_start(override, message):
    with pytest.raises(ValueError, match=message):
        check_config(load_config([*SMOKE, "adaptation.enabled=true", override]))


def test_step_factor_evaluation_of_a_non_grid_step_uses_step_size():
    ev = EvalSolverConfig(name="midpoint", step_factor=1.0)
    assert eval_options(ev, None, 0.1375) == {"step_size": 0.1375}
    assert eval_options(ev, 8, 0.125) == {"steps": 8}


# --- training -------------------------------------------------------------------------------------


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_growth_is_logged_in_history_and_adaptation_csv(tmp_path):
    # threshold 1: no gap can exceed it, so every check grows h by 1.1 (6 iterations, a check every 2).
    metrics = train_and_evaluate(load_config([*SMOKE, "adaptation.enabled=true", "adaptation.threshold=1.0"]), tmp_path)
    history, checks = _read(tmp_path / "history.csv"), _read(tmp_path / "adaptation.csv")
    assert list(history[0])[:6] == ["iteration", "epoch", "loss", "accuracy", "nfe_forward", "nfe_backward"]
    assert {"step_size", "nfe_forward_mean", "adapt_gap", "adapt_action"} <= set(history[0])
    assert [c["action"] for c in checks] == ["grow"] * 3 and [int(c["iteration"]) for c in checks] == [2, 4, 6]
    hs = [0.125 * 1.1**k for k in (1, 2, 3)]
    assert [float(r["step_size"]) for r in history] == pytest.approx(hs)
    assert [float(c["new_step_size"]) for c in checks] == pytest.approx(hs)
    # NFE of an iteration = grid steps at the h in use then: 8 (h=1/8), then 8 at 0.1375, 7 at 0.15125
    assert [int(r["nfe_forward"]) for r in history] == [8, 8, 7]
    a = metrics["train"]["adaptation"]
    assert a["final_step_size"] == pytest.approx(hs[-1]) and a["grow_count"] == 3
    assert a["nfe_forward_mean"] == pytest.approx((8 + 8 + 8 + 8 + 7 + 7) / 6)
    assert metrics["train"]["step_size"] == pytest.approx(hs[-1]) and metrics["train"]["steps"] is None
    evals = {e["test_solver"]: e for e in metrics["evaluations"]}
    assert evals["euler"]["is_train_solver"] and evals["euler"]["nfe"] == grid_steps(hs[-1], 1.0)
    assert evals["midpoint"]["test_step_size"] == pytest.approx(hs[-1]) and evals["midpoint"]["test_steps"] is None
    assert evals["midpoint"]["nfe"] == 2 * grid_steps(hs[-1], 1.0)
    model = load_model(tmp_path)  # integrates at the final step, as evaluated
    assert isinstance(model.block, ODEBlock) and model.block.step_size == pytest.approx(hs[-1])
    model(torch.zeros(3, 2))
    assert model.block.nfe == grid_steps(hs[-1], 1.0)


def test_halving_is_logged(tmp_path, monkeypatch):
    # A test-solver accuracy of -1 makes every gap > 1 > threshold: each check halves h.
    monkeypatch.setattr(StepSizeAdaptation, "_accuracy", lambda self, model, solver, h, x, y: (-1.0, 3))
    metrics = train_and_evaluate(load_config([*SMOKE, "adaptation.enabled=true"]), tmp_path)
    history = _read(tmp_path / "history.csv")
    assert [r["adapt_action"] for r in history] == ["halve"] * 3
    assert [float(r["step_size"]) for r in history] == pytest.approx([1 / 16, 1 / 32, 1 / 64])
    assert [int(r["nfe_forward"]) for r in history] == [8, 16, 32]
    assert metrics["train"]["steps"] == 64 and metrics["train"]["adaptation"]["check_nfe"] == 9
    assert math.isclose(metrics["train"]["adaptation"]["min_step_size_used"], 1 / 64)


def test_resume_restores_the_adapted_step(tmp_path):
    overrides = [*SMOKE, "adaptation.enabled=true", "adaptation.threshold=1.0", "trainer.log_every=1"]
    train_and_evaluate(load_config(overrides), tmp_path / "full")
    train_and_evaluate(load_config([*overrides, "trainer.iterations=3"]), tmp_path / "resumed")
    train_and_evaluate(load_config(overrides), tmp_path / "resumed")  # resumes at iteration 3 of 6
    full, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "resumed"))
    assert resumed == full
    assert _read(tmp_path / "full" / "adaptation.csv") == _read(tmp_path / "resumed" / "adaptation.csv")
