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


def test_compile_builds_a_fused_adam_that_steps_as_the_unfused_one():
    from odenet.runner.build import build_optimizer

    torch.manual_seed(0)
    cfg_eager, cfg_compiled = load_config([*SMOKE, "optimizer.weight_decay=0.01"]), load_config(
        [*SMOKE, "optimizer.weight_decay=0.01", "trainer.compile=true", "optimizer.schedule=cosine"])
    models = [build_model_for(cfg_eager) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    (plain, _), (fused, schedule) = build_optimizer(cfg_eager, models[0], 10), build_optimizer(cfg_compiled,
                                                                                               models[1], 10)
    assert fused.param_groups[0]["fused"] and not plain.param_groups[0]["fused"]
    assert schedule is not None and fused.param_groups[0]["initial_lr"] == cfg_compiled.optimizer.lr
    assert fused.param_groups[0]["weight_decay"] == 0.01 and len(fused.param_groups) == len(plain.param_groups)
    for _ in range(3):
        for model, opt in zip(models, (plain, fused)):
            opt.zero_grad()
            for p in model.parameters():  # the same synthetic gradient for both
                p.grad = torch.ones_like(p) * 0.1 + p.detach() * 0.5
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("saved_compiled", [True, False])
def test_a_resumed_optimiser_keeps_its_own_fused_flag(saved_compiled):
    """``load_state_dict`` copies the saved groups' ``fused`` / ``foreach``: a compile=true checkpoint resumed with
    compile=false would go on stepping fused Adam (and the reverse drop it). The restore keeps the fresh optimiser's
    flags and its state: it then steps as an optimiser of its own kind that had never been saved."""
    from types import SimpleNamespace

    from odenet.runner.build import build_optimizer
    from odenet.runner.loop import Trainer

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        for p in model.parameters():
            p.grad = torch.ones_like(p) * 0.1 + p.detach() * 0.5
        opt.step()

    cfgs = {c: load_config([*SMOKE, f"trainer.compile={str(c).lower()}"]) for c in (True, False)}
    torch.manual_seed(0)
    model, reference = build_model_for(cfgs[True]), build_model_for(cfgs[True])
    reference.load_state_dict(model.state_dict())
    saved, _ = build_optimizer(cfgs[saved_compiled], model, 10)
    never_saved, _ = build_optimizer(cfgs[not saved_compiled], reference, 10)
    for _ in range(2):
        step(model, saved)
        step(reference, never_saved)
    fresh, _ = build_optimizer(cfgs[not saved_compiled], model, 10)
    flags = [(g["fused"], g["foreach"]) for g in fresh.param_groups]
    assert [bool(g["fused"]) for g in saved.param_groups] == [saved_compiled] * len(flags)
    noop = SimpleNamespace(load_state_dict=lambda state: None)
    trainer = SimpleNamespace(growth=None, model=model, optimizer=fresh, scheduler=None, sampler=noop, scaler=noop,
                              adapter=None)
    ckpt = {"model": model.state_dict(), "optimizer": saved.state_dict(), "sampler": None,
            "torch_rng": torch.get_rng_state(), "scaler": None, "iteration": 2, "history": [], "window": {}}
    Trainer.restore(trainer, ckpt)  # type: ignore[arg-type]
    assert [(g["fused"], g["foreach"]) for g in fresh.param_groups] == flags
    assert [bool(g["fused"]) for g in fresh.param_groups] == [not saved_compiled] * len(flags)
    first = next(iter(fresh.state.values()))
    assert float(first["step"]) == 2.0
    step(model, fresh)
    step(reference, never_saved)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_the_compiled_training_forward_is_one_graph_equal_to_eager():
    from torch._dynamo.utils import counters

    from odenet.runner.loop import Trainer, loss_function

    cfg = load_config([*SMOKE, "trainer.compile=true"])
    model = build_model_for(cfg)
    eager = build_model_for(load_config(SMOKE))
    eager.load_state_dict(model.state_dict())
    assert compile_block(model)
    trainer = Trainer(cfg, model, None, None, None, None, None, None, "", 1)  # type: ignore[arg-type]
    loss_fn = loss_function("classification")
    step = trainer.forward_loss(loss_fn, weighted=False)
    torch._dynamo.reset()
    counters.clear()
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))  # the smoke config's digits: 64 pixels, 10 classes
    for _ in range(3):
        logits, loss = step(x, y)
        loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    want_logits = eager(x)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, loss_fn(want_logits, y), rtol=1e-5, atol=1e-6)
