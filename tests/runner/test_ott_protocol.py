"""Ott et al.'s Sphere2 protocol, runner side: the composed configs, the model they build, Hairer's initial step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from odenet.fields import Conv1dField, LinearField
from odenet.runner.adaptation import StepSizeAdaptation, StepSizeRule, hairer_initial_step
from odenet.runner.build import build_model
from odenet.runner.config import load_config
from odenet.runner.errors import ConfigError
from odenet.runner.train import train_and_evaluate

OTT = ("step_size_ablation_ott", "step_adaptation_ott")
EXPERIMENTS = Path(__file__).resolve().parents[2] / "conf" / "experiment"


def _resolved(name: str, *extra: str) -> dict:
    return OmegaConf.to_container(load_config([f"+experiment={name}", *extra]), resolve=True)


def test_ott_experiments_share_their_published_settings():
    grid, adapt = (_resolved(n) for n in OTT)
    for key in ("data", "field", "model", "block", "optimizer", "trainer"):
        assert grid[key] == adapt[key], key
    assert grid["data"]["name"] == "sphere2_ott" and grid["model"]["augment_dim"] == 0
    assert grid["model"]["init"] == "kaiming" and grid["field"]["kind"] == "conv1d" and grid["field"]["time"] == "none"
    assert (grid["optimizer"]["name"], grid["optimizer"]["lr"], grid["optimizer"]["schedule"]) == ("adam", 1e-4, "none")
    assert grid["trainer"]["batch_size"] == 128
    a = adapt["adaptation"]
    assert a["enabled"] and not grid["adaptation"]["enabled"]
    assert (a["every"], a["threshold"], a["accuracy_factor"], a["initial"]) == (50, 0.1, 50, "hairer")
    assert (a["min_step_size"], a["max_step_size"]) == (0.002, 1.0)


def test_ott_sweeps_run_five_seeds_and_our_variant_is_unchanged():
    for name in OTT:
        sweep = OmegaConf.load(EXPERIMENTS / f"{name}.yaml").hydra.sweeper.params
        assert str(sweep.seed) == "0,1,2,3,4"
    ours = _resolved("step_size_ablation")
    assert (ours["data"]["name"], ours["field"]["kind"], ours["model"]["augment_dim"]) == ("sphere2", "mlp", 1)
    assert ours["model"]["init"] == "default" and ours["optimizer"]["lr"] == 3e-3
    assert _resolved("step_adaptation")["adaptation"]["initial"] == "fixed"


def test_ott_model_has_their_parameter_count_and_init():
    """Field 3201 (tests/library/test_ott_library.py) + head Linear(2, 2) = 6: 3207; Kaiming: zero biases."""
    cfg = load_config(["+experiment=step_size_ablation_ott", "+train_solver=euler_8"])
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 2)
    assert isinstance(model.block.field, Conv1dField)
    assert sum(p.numel() for p in model.parameters()) == 3207
    assert not any(isinstance(m, nn.Linear) for m in model.stem.modules())  # no lift, no augmentation
    assert isinstance(model.head, nn.Linear) and tuple(model.head.weight.shape) == (2, 2)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            assert float(m.bias.detach().abs().max()) == 0.0
    assert model(torch.zeros(5, 2)).shape == (5, 2)


def test_conv1d_field_refuses_a_time_input():
    cfg = load_config(["+experiment=step_size_ablation_ott", "+train_solver=euler_8", "field.time=concat"])
    with pytest.raises(ConfigError, match="autonomous"):
        build_model(cfg, (2,), 2)


def test_hairer_initial_step_known_answer():
    """F(x) = 2x on points of norm 0.5: d0 = 0.5, d1 = 1, h0 = 0.005, d2 = 2 -> h1 = (0.01 / 2)^(1/2) < 100 h0."""
    field = LinearField(2)
    with torch.no_grad():
        field.linear.weight.copy_(2 * torch.eye(2))
    x = torch.tensor([[0.3, 0.4], [0.5, 0.0], [0.0, -0.5]])
    assert hairer_initial_step(field, x, order=1) == pytest.approx(math.sqrt(0.005), rel=1e-5)
    assert hairer_initial_step(field, x, order=3) == pytest.approx(0.005**0.25, rel=1e-5)
    # a slow field, F = 0.002 x: d1 = 0.001, d2 = 2e-6, h1 = (0.01 / 0.001)^(1/2) = 3.16 < 100 h0 = 500;
    # the rule caps it at T
    with torch.no_grad():
        field.linear.weight.copy_(0.002 * torch.eye(2))
    assert hairer_initial_step(field, x, order=1) == pytest.approx(math.sqrt(10.0), rel=1e-4)
    adapter = StepSizeAdaptation(StepSizeRule(min_step_size=0.002, max_step_size=1.0), 0.125)
    model = SimpleNamespace(stem=nn.Identity(), block=SimpleNamespace(field=field))
    adapter.initialize(model, x, "hairer")
    assert adapter.step_size == adapter.initial_step_size == 1.0
    adapter.initialize(model, x, "fixed")  # keeps what it has
    assert adapter.step_size == 1.0
    with pytest.raises(ValueError, match="adaptation.initial"):
        adapter.initialize(model, x, "guess")


def test_hairer_initial_step_takes_the_second_call_at_t0_plus_h0():
    """F(t, x) = 2x + 3t x on points of norm 0.5: d0 = 0.5, d1 = 1, h0 = 0.005;
    F(h0, x + h0 F(0, x)) - F(0, x) = h0 x (4 + 3 + 6 h0), so d2 = 0.5 (7 + 6 h0) = 3.515 (at t = 0 it would be 2)."""
    x = torch.tensor([[0.3, 0.4], [0.5, 0.0], [0.0, -0.5]])
    h = hairer_initial_step(lambda t, y: 2 * y + 3 * t * y, x, order=1)
    assert h == pytest.approx(math.sqrt(0.01 / 3.515), rel=1e-5)


def test_hairer_initial_step_norms_each_example_over_all_its_dimensions():
    """The same three 2-vectors as (3, 2), (3, 1, 2) or (3, 2, 1) states give the same step (F = 2x: sqrt(0.005))."""
    x = torch.tensor([[0.3, 0.4], [0.5, 0.0], [0.0, -0.5]])
    for shape in ((3, 2), (3, 1, 2), (3, 2, 1)):
        h = hairer_initial_step(lambda t, y: 2 * y, x.reshape(shape), order=1)
        assert h == pytest.approx(math.sqrt(0.005), rel=1e-5), shape


def _hairer_before_the_review(field, x: torch.Tensor, order: int) -> float:
    """The formula the recorded step_adaptation_ott runs used: F at t = 0 twice, norms over the last axis."""
    t0 = torch.zeros(())
    f0 = field(t0, x)
    d0, d1 = float(x.norm(dim=-1).mean()), float(f0.norm(dim=-1).mean())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = float((field(t0, x + h0 * f0) - f0).norm(dim=-1).mean()) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) < 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hairer_initial_step_is_unchanged_for_the_recorded_sphere2_runs(seed):
    """Ott et al.'s Sphere2 field is autonomous on 2-D vectors: the corrected formula gives the recorded steps."""
    torch.manual_seed(seed)
    field = build_model(load_config(["+experiment=step_adaptation_ott"]), (2,), 2).block.field
    x = torch.randn(32, 2)
    with torch.no_grad():
        old = _hairer_before_the_review(field, x, order=1)
    assert hairer_initial_step(field, x, order=1) == pytest.approx(old, rel=1e-6)


def test_every_solver_adaptation_allows_has_its_order():
    """rk4_38 passed validation but had no order (a KeyError at the first batch): orders come from the tableaus."""
    from odenet.runner.adaptation import solver_order
    from odenet.runner.validate import validate

    assert [solver_order(n) for n in ("euler", "midpoint", "rk4", "rk4_38")] == [1, 2, 4, 4]
    cfg = load_config(["+experiment=step_adaptation_ott", "solver.name=rk4_38"])
    validate(cfg)
    adapter = StepSizeAdaptation.from_config(cfg)
    x = torch.tensor([[0.3, 0.4], [0.5, 0.0], [0.0, -0.5]])
    model = SimpleNamespace(stem=nn.Identity(), block=SimpleNamespace(field=lambda t, y: 2 * y))
    adapter.initialize(model, x, "hairer")
    assert adapter.initial_step_size == pytest.approx(0.005**0.2, rel=1e-5)  # (0.01 / 2)^(1 / 5): order 4
    with pytest.raises(ValueError, match="solver.name"):
        solver_order("dopri5")


def test_ott_adaptation_smoke_run_starts_at_hairers_step(tmp_path):
    cfg = load_config(["+experiment=step_adaptation_ott", "+debug=smoke", "seed=0", "hydra.mode=RUN"])
    metrics = train_and_evaluate(cfg, tmp_path)
    a = metrics["train"]["adaptation"]
    torch.manual_seed(0)
    model = build_model(cfg, (2,), 2)
    from odenet.data import load_dataset

    x = load_dataset("sphere2_ott", n_train=64, n_test=64).x_train[:32]
    expected = hairer_initial_step(model.block.field, x, order=1)
    assert 0.002 <= a["initial_step_size"] <= 1.0
    assert a["initial_step_size"] == pytest.approx(min(expected, 1.0), rel=1e-5)
    assert a["accuracy_factor"] == 50 and a["checks"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "ok"
