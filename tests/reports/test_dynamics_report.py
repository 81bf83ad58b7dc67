"""The augmentation and regularization experiments (smoke sweeps end to end) and their report modules,
odenet.reports.augmentation and odenet.reports.regularization (with the shared views in odenet.reports.runs)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from odenet.blocks import ODEBlock, ResidualStack
from odenet.models import Classifier
from odenet.reports import MAX_PNG_BYTES, ReportContext
from odenet.reports import augmentation as aug
from odenet.reports import regularization as reg
from odenet.reports.runs import model_label
from odenet.runner.config import load_config
from odenet.runner.train import load_model, train_and_evaluate

SMOKE = ["+debug=smoke", "trainer.progress=false"]



def label_cell(label: str, runs: int = 1) -> str:
    """Regex of a table row's start: the model label, its mark when smoke models are at chance, the run count."""
    return re.escape(f"| {label}") + r"(?: †(?: \d+/\d+)?)?" + re.escape(f" | {runs} |")


def _histories(sweep: Path) -> dict[Path, list[dict[str, str]]]:
    out = {}
    for path in sorted(sweep.rglob("history.csv")):
        with path.open(newline="") as f:
            out[path.parent] = list(csv.DictReader(f))
    return out


# ---------------------------------------------------------------------------------------------- smoke sweeps


@pytest.mark.slow
def test_augmentation_smoke_sweep(smoke_sweep):
    proc, sweep = smoke_sweep("augmentation")
    assert proc.returncode == 0, proc.stderr[-3000:]
    histories = _histories(sweep)
    assert len(histories) == 4  # node, anode, resnet_32, resnet_1 (the smoke sweep fixes seed=0)
    states = {}
    for run, history in histories.items():
        model = load_model(run)
        x = torch.zeros(3, 2)
        states[type(model.block).__name__, getattr(model.block, "steps", None), model.stem(x).shape[1]] = run
        assert [int(r["iteration"]) for r in history] == [2, 4, 6]  # trainer.log_every=2
        nfe = [int(r["nfe_forward"]) for r in history]
        if isinstance(model.block, ODEBlock):
            assert all(n >= 14 for n in nfe) and history[0]["steps_accepted"]  # dopri5: >= 2 steps of 6 + 2
        else:
            assert nfe == [model.block.steps] * 3
    # NODE and the ResNets integrate the 2-D input itself; ANODE one more (zero) dimension
    assert set(states) == {("ODEBlock", None, 2), ("ODEBlock", None, 3), ("ResidualStack", 1, 2),
                           ("ResidualStack", 32, 2)}
    text = (sweep / "report.md").read_text()
    assert "## Dynamics: accuracy and NFE" in text and "## Topology on concentric spheres (2-D)" in text
    for label in ("NODE (dopri5)", "ANODE +1 (dopri5)", "ResNet N=1 (h=1)", "ResNet N=32 (h=1/32)"):
        assert len(re.findall(label_cell(label), text)) == 2, label  # one row in each section
    assert "## Kinetic energy and Jacobian after training" not in text  # nothing penalised here
    for png in ("nfe_over_training.png", "flows.png"):
        assert 0 < (sweep / png).stat().st_size <= MAX_PNG_BYTES


@pytest.mark.slow  # a 15-s sweep: the slow step (the dynamics report has unit tests)
def test_regularization_smoke_sweep(smoke_sweep):
    proc, sweep = smoke_sweep("regularization")
    assert proc.returncode == 0, proc.stderr[-3000:]
    histories = _histories(sweep)
    assert len(histories) == 4  # {sphere2, digits} x {kinetic_jacobian, none}
    seen = set()
    for run, history in histories.items():
        metrics = json.loads((run / "metrics.json").read_text())
        cfg = OmegaConf.load(run / "config.yaml")
        penalised = cfg.regularization.kinetic > 0
        seen.add((cfg.data.name, penalised))
        assert metrics["train"]["solver"] == "dopri5" and metrics["train"]["block"] == "ode"
        assert all(int(r["nfe_forward"]) >= 14 and r["nfe_backward"] == "0" for r in history)  # direct backprop
        if penalised:
            assert cfg.regularization.jacobian == 0.1 and cfg.regularization.kinetic == 0.1
            values = [float(r[p]) for r in history for p in ("kinetic", "jacobian")]
            assert all(math.isfinite(v) and v > 0 for v in values)
        else:
            assert "kinetic" not in history[0] and "jacobian" not in history[0]
        assert [e["test_solver"] for e in metrics["evaluations"]] == ["dopri5", "dopri5"]
        assert metrics["evaluations"][1]["rtol"] == 1e-6
    assert seen == {("sphere2", True), ("sphere2", False), ("digits", True), ("digits", False)}
    text = (sweep / "report.md").read_text()
    assert "## Dynamics: accuracy and NFE" in text and "## Kinetic energy and Jacobian after training" in text
    assert "### sphere2" in text and "### digits" in text
    assert re.search(label_cell("ANODE +1 (dopri5), kinetic 0.1, jacobian 0.1"), text)  # sphere2: Ott's model
    assert re.search(label_cell("NODE (dopri5), kinetic 0.1, jacobian 0.1"), text)  # digits
    assert "kinetic (last 10 %)" in text and "## Topology" not in text
    for png in ("nfe_over_training.png", "flows.png"):  # flows: the sphere2 models (digits is 64-D)
        assert 0 < (sweep / png).stat().st_size <= MAX_PNG_BYTES


# ---------------------------------------------------------------------------------------------- helpers


def test_model_labels_name_the_architecture_and_the_penalties():
    def label(*overrides: str) -> str:
        return model_label(load_config(list(overrides)))

    assert label("+experiment=augmentation", "+flow_model=node") == "NODE (dopri5)"
    assert label("+experiment=augmentation", "+flow_model=anode") == "ANODE +1 (dopri5)"
    assert label("+experiment=augmentation", "+flow_model=resnet_32") == "ResNet N=32 (h=1/32)"
    assert label("+experiment=regularization", "+reg_task=digits", "+penalty=kinetic_jacobian",
                 "solver.adjoint=true") == "NODE (dopri5, adjoint), kinetic 0.1, jacobian 0.1"
    assert label("block=ode", "solver=euler", "solver.steps=4") == "NODE (euler N=4)"
    assert label("block=plain", "solver.steps=4", "regularization.kinetic=0") == "plain net N=4 (h=1/4)"


def test_mean_curve_averages_the_iterations_every_run_logged():
    a = [{"iteration": "10", "nfe_forward": "20"}, {"iteration": "20", "nfe_forward": "26"},
         {"iteration": "30", "nfe_forward": "32"}]
    b = [{"iteration": "10", "nfe_forward": "14"}, {"iteration": "20", "nfe_forward": ""},
         {"iteration": "30", "nfe_forward": "38"}]
    it, mean, (lo, hi) = reg.mean_curve([a, b], "nfe_forward")
    assert it.tolist() == [10, 30]  # run b has no value at 20
    assert mean.tolist() == [17, 35] and lo.tolist() == [14, 32] and hi.tolist() == [20, 38]
    assert reg.mean_curve([a], "nfe_backward") is None
    assert reg.history_means(a, "nfe_forward", tail=0.34) == (pytest.approx(26), pytest.approx(29))
    assert reg.history_means(a, "kinetic") is None
    assert reg.first_below(a, "nfe_forward", 30) == 10 and reg.first_below(b, "nfe_forward", 20) == 10
    assert reg.first_below(a, "nfe_forward", 20) is None  # never strictly below


class _Rule(nn.Module):
    """Class 1 where ``rule(x)``: a stand-in classifier for region_errors."""

    def __init__(self, rule) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = self.rule(x).float()
        return torch.stack([1 - one, one], dim=1)


def test_region_errors_measure_the_misclassified_area():
    radial = aug.region_errors(_Rule(lambda x: x.norm(dim=1) > 0.75), n=4000)
    assert radial == {"disk_as_outer": 0.0, "annulus_as_inner": 0.0}  # g(x) itself
    half = aug.region_errors(_Rule(lambda x: x[:, 0] > 0), n=4000)  # a linear classifier on the plane
    assert half["disk_as_outer"] == pytest.approx(0.5, abs=0.03)
    assert half["annulus_as_inner"] == pytest.approx(0.5, abs=0.03)
    pts = aug.uniform_ball_shell(4000, 1.0, 1.5)
    assert 1.0 <= float(pts.norm(dim=1).min()) and float(pts.norm(dim=1).max()) <= 1.5
    # uniform in area: the share inside r < 1.25 is (1.25² - 1) / (1.5² - 1) = 0.45
    assert float((pts.norm(dim=1) < 1.25).float().mean()) == pytest.approx(0.45, abs=0.03)


class _Constant(nn.Module):
    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = nn.Parameter(c)

    def forward(self, t, x):
        return self.c.expand_as(x)


class _Linear(nn.Module):
    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, t, x):
        return self.a * x


def test_measure_penalties_integrates_kinetic_energy_and_jacobian_with_the_blocks_solver():
    c = torch.tensor([0.6, -0.8, 2.0])
    for block in (ODEBlock(_Constant(c), T=2.0), ResidualStack(_Constant(c), steps=3, T=2.0)):
        model = Classifier(nn.Identity(), block, nn.Identity()).eval()
        x = torch.randn(5, 3)
        state = torch.random.get_rng_state()
        values = reg.measure_penalties(model, x)
        assert values["kinetic"] == pytest.approx(2.0 * float(c.pow(2).sum()), rel=1e-5)  # T ||c||^2
        assert values["jacobian"] == 0.0  # F does not depend on x
        assert not model.training and torch.equal(torch.random.get_rng_state(), state)
        assert model.block is block and not block.regularizers  # the model's own block untouched
    # F = a x: ||dF/dx||_F^2 = a^2 d exactly in expectation; Hutchinson with 4000 probes within 5 %
    model = Classifier(nn.Identity(), ODEBlock(_Linear(0.5), rtol=1e-7, atol=1e-9), nn.Identity())  # tolerances kept
    values = reg.measure_penalties(model, torch.ones(4000, 2))
    assert values["jacobian"] == pytest.approx(0.25 * 2, rel=0.05)
    x0 = torch.ones(2)  # x(t) = e^{t/2} x0: int_0^1 ||x/2||^2 dt = ||x0||^2 (e - 1) / 4
    assert values["kinetic"] == pytest.approx(float(x0.pow(2).sum()) * (math.e - 1) / 4, rel=1e-5)


def test_sections_skip_a_sweep_without_their_data(tmp_path):
    """A fixed-step, unpenalised run on sphere2: no dynamics, penalties or topology section, no plots; its
    dopri5-trained twin gets the dynamics section and both plots (2-D inputs, two classes)."""
    run = tmp_path / "run"
    train_and_evaluate(load_config([*SMOKE, "data=sphere2", "evaluation=none"]), run)  # the default data: digits
    ctx = ReportContext.load(tmp_path)
    assert reg.dynamics_section(ctx) is None
    assert reg.nfe_over_training_plot(ctx) is None
    assert reg.penalties_section(ctx) is None
    assert aug.topology_section(ctx) is None
    assert aug.flows_plot(ctx) is None
    train_and_evaluate(load_config([*SMOKE, "data=sphere2", "evaluation=none", "block=ode", "solver=dopri5"]),
                       tmp_path / "ode")
    ctx = ReportContext.load(tmp_path)
    assert re.search(label_cell("NODE (dopri5)"), "\n".join(reg.dynamics_section(ctx)))
    assert reg.nfe_over_training_plot(ctx) is not None and aug.flows_plot(ctx) is not None
    assert reg.penalties_section(ctx) is None and aug.topology_section(ctx) is None
    assert set(ctx.runs) == {"run", "ode"} and ctx.run("ode").load_model() is ctx.run("ode").load_model()
