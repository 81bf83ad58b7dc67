"""``trainer.compile=true``: the block's whole solve compiled (evaluation solvers too), the same numbers as eager,
a ``model.pt`` that loads into an eager model; an ODE block is left eager."""

from __future__ import annotations

import pytest
import torch

from odenet.runner.accel import compile_block
from odenet.runner.build import build_model_for
from odenet.runner.config import load_config
from odenet.runner.rundir import RunDir
from odenet.runner.train import train_and_evaluate

SMOKE = ["+debug=smoke", "trainer.progress=false", "threads=1"]


def test_an_ode_block_is_left_eager(caplog):
    model = build_model_for(load_config([*SMOKE, "block=ode", "solver=dopri5"]))
    with caplog.at_level("WARNING"):
        assert compile_block(model) is False
    assert not model.block.compiled and "left eager" in caplog.text


@pytest.mark.slow
def test_a_compiled_run_matches_the_eager_run_and_loads_eager(tmp_path):
    eager = train_and_evaluate(load_config(SMOKE), tmp_path / "eager")
    compiled = train_and_evaluate(load_config([*SMOKE, "trainer.compile=true"]), tmp_path / "compiled")
    assert compiled["status"] == "ok" and len(compiled["evaluations"]) == len(eager["evaluations"]) > 1
    assert compiled["train"]["final_loss"] == pytest.approx(eager["train"]["final_loss"], rel=1e-4)
    for ours, theirs in zip(compiled["evaluations"], eager["evaluations"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    model = RunDir(tmp_path / "compiled").load_model()  # an eager model
    assert not model.block.compiled
    keys = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True).keys()
    assert keys == build_model_for(load_config(SMOKE)).state_dict().keys()
