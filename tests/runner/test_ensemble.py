"""``trainer.ensemble=K``: K seeds trained as one batched ensemble match K separate runs, folder for folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from odenet.runner.accel import seed_everything
from odenet.runner.build import build_model
from odenet.runner.config import load_config
from odenet.runner.ensemble import Ensemble, SweepNaming, member_config, member_runs, prepared_members, train_ensemble
from odenet.runner.rundir import RunDirError
from odenet.runner.train import TrainingDiverged, load_data, train_and_evaluate
from odenet.runner.validate import ConfigError, validate

K = 3
BASE = ["+setup=digits_mlp", "+debug=smoke", "threads=1", "solver.steps=4"]
#: Keys that hold wall times (or depend on them): the only ones allowed to differ between the two ways.
TIMING = {"seconds"}
VARIANTS = {
    "adam": [],
    "sgd_wd_cosine": ["optimizer=sgd", "optimizer.lr=0.05", "optimizer.weight_decay=0.01",
                      "optimizer.schedule=cosine", "optimizer.nesterov=true"],
    "adam_wd_step_plain": ["optimizer.weight_decay=0.001", "optimizer.schedule=step", "block=plain"],
    "learned_steps": ["block=learned_steps", "optimizer.step_lr_scale=10"],
    # each member its own adaptive steps (MemberSolve): its history's nfe, steps and step sizes are its own run's
    "dopri5_odenet": ["solver=dopri5", "solver.backend=odenet", "field.time=concat"],
}


def config(*overrides: str):
    return load_config([*BASE, *overrides])


def separate(root: Path, overrides: list[str], seeds=range(K)) -> list[dict]:
    """The separate runs of ``seeds``, in ``root/seed=S`` (as a sweep over seed names them)."""
    return [train_and_evaluate(config(*overrides, f"seed={s}"), root / f"seed={s}", {"seed": str(s)})
            for s in seeds]


def ensemble_runs(root: Path, overrides: list[str]):
    cfg = config(*overrides, f"trainer.ensemble={K}")
    return cfg, member_runs(cfg, root / "seed=0", ["seed=0"], SweepNaming(root))


def history(path: Path) -> list[dict[str, str]]:
    with (path / "history.csv").open() as f:
        return list(csv.DictReader(f))


def assert_close(a, b, where: str = "", rel: float = 1e-5) -> None:
    """Equal, floats to ``rel`` (batched kernels round differently); timing keys skipped."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            if key not in TIMING:
                assert_close(a[key], b[key], f"{where}.{key}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]", rel)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-7), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_members_start_from_the_separate_runs_parameters_bit_for_bit(tmp_path):
    cfg, runs = ensemble_runs(tmp_path, ["analysis.gradients=true"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        stacked = Ensemble(jobs, rngs).params
    for i in range(K):
        mcfg = member_config(cfg, i)
        seed_everything(i)
        data = load_data(mcfg)
        own = build_model(mcfg, data.input_shape, data.num_classes).state_dict()
        for name, value in stacked.items():
            assert torch.equal(value[i].detach(), own[name]), (i, name)
    first = next(iter(stacked.values()))
    assert not torch.equal(first[0], first[1])  # the seeds differ


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_members_follow_their_separate_runs(tmp_path, variant):
    overrides = [*VARIANTS[variant], "trainer.iterations=20", "trainer.log_every=1", "trainer.checkpoint_every=20"]
    separate(tmp_path / "sep", overrides)
    cfg, runs = ensemble_runs(tmp_path / "ens", overrides)
    train_ensemble(cfg, runs)
    for s, (path, _) in enumerate(runs):
        ours, theirs = history(path), history(tmp_path / "sep" / f"seed={s}")
        assert len(ours) == len(theirs) == 20
        for a, b in zip(ours, theirs):  # every iteration's loss and accuracy, learning rate and step sizes
            assert set(a) == set(b)
            for key in a:
                if key != "seconds":  # step_sizes: the accepted steps, space-separated
                    mine, own = (a[key] or "0").split(), (b[key] or "0").split()
                    assert len(mine) == len(own), key
                    assert all(math.isclose(float(x), float(y), rel_tol=1e-5, abs_tol=1e-7)
                               for x, y in zip(mine, own)), key
        mine = torch.load(path / "model.pt", weights_only=True)
        own = torch.load(tmp_path / "sep" / f"seed={s}" / "model.pt", weights_only=True)
        for name in own:
            torch.testing.assert_close(mine[name], own[name], rtol=1e-4, atol=1e-5)
        ck_mine = torch.load(path / "checkpoint.pt", weights_only=True)
        ck_own = torch.load(tmp_path / "sep" / f"seed={s}" / "checkpoint.pt", weights_only=True)
        assert torch.equal(ck_mine["torch_rng"], ck_own["torch_rng"])
        assert set(ck_mine) == set(ck_own) and ck_mine["iteration"] == ck_own["iteration"]
        mine_opt, own_opt = ck_mine["optimizer"]["state"], ck_own["optimizer"]["state"]
        assert set(mine_opt) == set(own_opt)
        for idx in own_opt:
            for key, value in own_opt[idx].items():
                torch.testing.assert_close(mine_opt[idx][key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_compiled_ensemble_follows_the_separate_runs_and_compiles_its_step_once(tmp_path):
    from torch._dynamo.utils import counters

    overrides = ["trainer.iterations=20", "trainer.log_every=1", "trainer.checkpoint_every=20"]
    separate(tmp_path / "sep", overrides)  # eager separate runs
    cfg, runs = ensemble_runs(tmp_path / "ens", [*overrides, "trainer.compile=true"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        ens = Ensemble(jobs, rngs)
        assert ens.compile and ens.batched is not None
        assert not Ensemble(jobs, rngs, fast=False).compile  # the vmap fallback stays eager
        torch._dynamo.reset()
        counters.clear()
        ens.fit()
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == 1 and len(ens._compiled) == 1  # one graph for 20 iterations: no recompile
    for s, (path, _) in enumerate(runs):
        ours, theirs = history(path), history(tmp_path / "sep" / f"seed={s}")
        assert len(ours) == len(theirs) == 20
        for a, b in zip(ours, theirs):
            for key in a:
                if key != "seconds":
                    assert math.isclose(float(a[key] or 0), float(b[key] or 0), rel_tol=1e-4, abs_tol=1e-6), key


def test_run_folders_and_report_are_those_of_separate_runs(tmp_path):
    from odenet.reports.write import write_report

    overrides = ["analysis.gradients=true", "evaluation=step_factors"]
    expected = separate(tmp_path / "sep", overrides)
    cfg, runs = ensemble_runs(tmp_path / "ens", overrides)
    assert [p.name for p, _ in runs] == ["seed=0", "seed=1", "seed=2"]
    got = train_ensemble(cfg, runs)
    for s, (path, _) in enumerate(runs):
        sep = tmp_path / "sep" / f"seed={s}"
        assert (path / "config.yaml").read_text() == (sep / "config.yaml").read_text()
        on_disk = json.loads((path / "metrics.json").read_text())
        assert_close(on_disk, json.loads((sep / "metrics.json").read_text()), f"seed={s}")
        assert_close(got[s], expected[s])
        assert sorted(p.name for p in path.iterdir()) == sorted(p.name for p in sep.iterdir())
    reports = [write_report(tmp_path / side, plots=False) for side in ("sep", "ens")]
    texts = [r[1].read_text().replace(str(tmp_path / side), "ROOT") for r, side in zip(reports, ("sep", "ens"))]
    assert texts[0] == texts[1]  # report.md
    rows = [list(csv.DictReader(r[0].open())) for r in reports]
    for a, b in zip(*rows):
        a.pop("run_dir"), b.pop("run_dir")
        assert_close({k: float(v) if v.replace(".", "").replace("-", "").replace("e", "").isdigit() else v
                      for k, v in a.items()},
                     {k: float(v) if v.replace(".", "").replace("-", "").replace("e", "").isdigit() else v
                      for k, v in b.items()})


def test_an_interrupted_ensemble_resumes_and_ends_where_separate_runs_end(tmp_path):
    overrides = ["trainer.checkpoint_every=3"]
    separate(tmp_path / "sep", [*overrides, "trainer.iterations=6"])
    cfg, runs = ensemble_runs(tmp_path / "ens", [*overrides, "trainer.iterations=3"])
    train_ensemble(cfg, runs)  # a constant learning rate: a longer run continues this one
    cfg, runs = ensemble_runs(tmp_path / "ens", [*overrides, "trainer.iterations=6"])
    train_ensemble(cfg, runs)
    for s, (path, _) in enumerate(runs):
        assert_close(json.loads((path / "metrics.json").read_text()),
                     json.loads((tmp_path / "sep" / f"seed={s}" / "metrics.json").read_text()))
        assert [r["iteration"] for r in history(path)] == ["2", "3", "4", "6"]  # 3: the end of the first part
    (runs[1][0] / "checkpoint.pt").unlink()  # members at different iterations: refused, nothing written
    before = (runs[0][0] / "metrics.json").read_text()
    with pytest.raises(RunDirError, match=r"trainer.ensemble=3 resumes only members checkpointed at the same"):
        train_ensemble(*ensemble_runs(tmp_path / "ens", [*overrides, "trainer.iterations=9"]))
    assert (runs[0][0] / "metrics.json").read_text() == before


def test_diverged_members_fail_as_their_separate_runs_fail(tmp_path):
    overrides = ["optimizer.lr=1e6", "optimizer.name=sgd", "optimizer.momentum=0"]
    for s in range(K):
        with pytest.raises(TrainingDiverged):
            separate(tmp_path / "sep", overrides, [s])
    cfg, runs = ensemble_runs(tmp_path / "ens", overrides)
    with pytest.raises(TrainingDiverged, match="the training loss became"):
        train_ensemble(cfg, runs)
    for s, (path, _) in enumerate(runs):
        ours = json.loads((path / "metrics.json").read_text())
        assert ours["status"] == "failed"
        assert ours == json.loads((tmp_path / "sep" / f"seed={s}" / "metrics.json").read_text())


@pytest.mark.parametrize("override", [
    "solver=dopri5", "block=ode", "data.augment=flip", "regularization.kinetic=0.1", "regularization.jacobian=0.1",
    "trainer.amp=true", "adaptation.enabled=true",
])
def test_what_would_couple_the_members_is_refused_in_one_line(override):
    with pytest.raises(ConfigError) as err:
        validate(config(override, f"trainer.ensemble={K}"))
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"trainer.ensemble={K} cannot batch ") and "trainer.ensemble=1" in text
    validate(config(override, "trainer.ensemble=1") if override != "data.augment=flip" else config())


def test_ensemble_size_is_checked():
    with pytest.raises(ConfigError, match="trainer.ensemble"):
        validate(config("trainer.ensemble=0"))


def test_member_folders_are_the_sweeps_own_job_folders(tmp_path):
    cfg = config("seed=5", "trainer.ensemble=3")
    naming = SweepNaming(tmp_path, exclude_keys=["debug", "trainer.ensemble"])
    task = ["+debug=smoke", "block=plain", "seed=5", "trainer.ensemble=3"]
    runs = member_runs(cfg, tmp_path / "block=plain,seed=5", task, naming)
    assert [p for p, _ in runs] == [tmp_path / f"block=plain,seed={s}" for s in (5, 6, 7)]
    assert [o for _, o in runs] == [{"debug": "smoke", "block": "plain", "seed": str(s)} for s in (5, 6, 7)]
    # no seed among the job's overrides (member 0 is the job itself), and a folder named otherwise
    runs = member_runs(config("trainer.ensemble=2"), tmp_path / "run", ["block=plain"], naming)
    assert [p for p, _ in runs] == [tmp_path / "run", tmp_path / "run_seed=1"]
    assert runs[1][1] == {"block": "plain", "seed": "1"}


def test_the_batched_weights_forward_equals_vmap_and_is_used_where_it_fits(tmp_path):
    cfg, runs = ensemble_runs(tmp_path / "a", ["field.time=concat", "field.depth=2"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        fast, slow = Ensemble(jobs, rngs), Ensemble(jobs, rngs, fast=False)
        assert fast.batched is not None and slow.batched is None
        idx = torch.stack([j.trainer.sampler.next() for j in jobs])
        xb, yb = jobs[0].x_train[idx], jobs[0].y_train[idx]
        loss_fn = torch.nn.functional.cross_entropy
        (lf, of), (ls, os_) = fast.losses(xb, yb, loss_fn), slow.losses(xb, yb, loss_fn)
        torch.testing.assert_close(of, os_, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lf, ls, rtol=1e-5, atol=1e-6)
        for i, job in enumerate(jobs):  # and each member's own model, alone
            torch.testing.assert_close(of[i], job.model(xb[i]), rtol=1e-5, atol=1e-6)
        fast.step(lf), slow.step(ls)
        for name in fast.params:
            torch.testing.assert_close(fast.params[name], slow.params[name], rtol=1e-5, atol=1e-6)
    cfg, runs = ensemble_runs(tmp_path / "b", ["block=learned_steps"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        assert Ensemble(jobs, rngs).batched is None  # softmax over the step logits: not per feature


def test_a_sweep_writes_each_member_where_its_own_job_would(tmp_path):
    import os
    import subprocess
    import sys

    # a relative sweep dir (as the default multirun/...): Hydra's job folders are absolute, under the cwd
    args = ["-m", "+debug=smoke", "data=sphere2", "block=plain,residual", "seed=0", "trainer.ensemble=2",
            "hydra.sweep.dir=rel/sweep"]
    done = subprocess.run([sys.executable, "-m", "odenet.run", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "rel" / "sweep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]  # nothing beside the sweep
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert folders == [f"block={b},data=sphere2,seed={s}" for b in ("plain", "residual") for s in (0, 1)]
    for name in folders:
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        named = dict(part.split("=") for part in name.split(","))
        assert metrics["status"] == "ok" and metrics["seed"] == int(named["seed"])
        assert {k: v for k, v in metrics["overrides"].items() if k != "debug"} == named  # no trainer.ensemble
    assert (sweep / "summary.csv").is_file()


@pytest.mark.parametrize("fast", [True, False])
def test_one_diverged_member_leaves_the_others_training_as_their_separate_runs(tmp_path, fast):
    overrides = ["trainer.iterations=8"]
    separate(tmp_path / "sep", overrides)
    cfg, runs = ensemble_runs(tmp_path / "ens", overrides)
    with prepared_members(cfg, runs) as (jobs, rngs):
        ens = Ensemble(jobs, rngs, fast=fast)
        with torch.no_grad():
            ens.params["head.weight"][1] = float("nan")  # member 1's loss is NaN at iteration 1
        errors = ens.fit()
        assert isinstance(errors[1], TrainingDiverged) and "at iteration 1:" in str(errors[1])
        assert errors[0] is None and errors[2] is None
        for i in (0, 2):
            own = torch.load(tmp_path / "sep" / f"seed={i}" / "model.pt", weights_only=True)
            for name, value in jobs[i].model.state_dict().items():
                torch.testing.assert_close(value, own[name], rtol=1e-4, atol=1e-5)


POISON_AT = 4  #: the training iteration at whose start member 1's lift weights turn NaN


def _poison_stem(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` whose lift (``stem.1``, before the block) turns NaN at its ``POISON_AT``-th training forward."""
    calls = [0]

    def hook(module, args):
        if module.training:
            calls[0] += 1
            if calls[0] == POISON_AT:
                with torch.no_grad():
                    module[1].weight.fill_(float("nan"))

    model.stem.register_forward_pre_hook(hook)
    return model


@pytest.mark.parametrize("fast", [True, False])
def test_a_member_whose_state_goes_non_finite_fails_alone_as_its_separate_run(tmp_path, monkeypatch, fast):
    import odenet.runner.ensemble as ensemble_module
    import odenet.runner.train as train_module

    overrides = ["trainer.log_every=1", "trainer.checkpoint_every=2"]
    expected = separate(tmp_path / "sep", overrides, [0, 2])
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *a, **kw: _poison_stem(build(*a, **kw)))
    with pytest.raises(TrainingDiverged, match="the model blew up in training"):
        separate(tmp_path / "sep", overrides, [1])
    monkeypatch.undo()

    if not fast:
        monkeypatch.setattr(ensemble_module, "batched_model", lambda *a: None)
    losses, calls = Ensemble.losses, [0]

    def poisoned(self, xb, yb, loss_fn):
        calls[0] += 1
        if calls[0] == POISON_AT:
            assert (self.batched is not None) == fast
            with torch.no_grad():
                self.params["stem.1.weight"][1] = float("nan")
        return losses(self, xb, yb, loss_fn)

    monkeypatch.setattr(Ensemble, "losses", poisoned)
    cfg, runs = ensemble_runs(tmp_path / "ens", overrides)
    with pytest.raises(TrainingDiverged, match="the model blew up in training"):
        train_ensemble(cfg, runs)
    for s, (path, _) in enumerate(runs):
        sep = tmp_path / "sep" / f"seed={s}"
        ours, theirs = json.loads((path / "metrics.json").read_text()), json.loads((sep / "metrics.json").read_text())
        if s == 1:
            assert ours["status"] == "failed" and "initial state" in ours["reason"] and "not finite" in ours["reason"]
            assert ours == theirs  # the same reason, to the count of NaN entries
        else:
            assert ours["status"] == "ok"
            assert_close(ours, theirs, f"seed={s}")
            assert_close(ours, expected[s // 2], f"seed={s}")
        assert [r["iteration"] for r in history(path)] == [r["iteration"] for r in history(sep)]
        ck_ours, ck_theirs = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (path, sep))
        assert ck_ours["iteration"] == ck_theirs["iteration"] == (2 if s == 1 else 6)


def test_a_learning_rate_out_of_range_ends_the_members_before_their_row_and_checkpoint(tmp_path):
    class NaNRate:  # a schedule whose rate is NaN after its third step
        def __init__(self, optimizer):
            self.optimizer, self.steps = optimizer, 0

        def step(self):
            self.steps += 1
            if self.steps == 3:
                for group in self.optimizer.param_groups:
                    group["lr"] = float("nan")

        def state_dict(self):
            return {"steps": self.steps}

    cfg, runs = ensemble_runs(tmp_path, ["trainer.log_every=1", "trainer.checkpoint_every=3"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        for job in jobs:
            job.trainer.scheduler = NaNRate(job.trainer.optimizer)
        errors = Ensemble(jobs, rngs).fit()
    for error, (path, _) in zip(errors, runs):  # as the loop of a separate run: rows 1, 2; no checkpoint at 3
        assert isinstance(error, TrainingDiverged) and "gave learning rate nan at iteration 3" in str(error)
        assert [r["iteration"] for r in history(path)] == ["1", "2"]
        assert not (path / "checkpoint.pt").exists()


def test_an_adaptive_solve_the_batched_model_cannot_take_is_refused(tmp_path):
    """vmap cannot branch per step: an adaptive ensemble without the batched MLP model is refused, not crashed."""
    cfg, runs = ensemble_runs(tmp_path, VARIANTS["dopri5_odenet"])
    with prepared_members(cfg, runs) as (jobs, rngs):
        with pytest.raises(ValueError, match="adaptive solve only for MLP models"):
            Ensemble(jobs, rngs, fast=False)
