"""A battery of bad runner inputs: each refused at start, before anything is written, with the key named.

Two doors: ``validate(load_config(overrides))`` (values, ranges, combinations; a ``ConfigError``) and the command
line's precheck (``precheck(argv)``: composition errors — misspelt keys however written, wrong types, unknown
options — as one line, before torch is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from odenet.runner.config import load_config, precheck
from odenet.runner.validate import ConfigError, validate

# (overrides, text the message must contain: the config key)
VALUE_CASES = [
    (["trainer.iterations=0"], "trainer.iterations"),
    (["trainer.iterations=-5"], "trainer.iterations"),
    (["trainer.iterations=null", "trainer.epochs=0"], "trainer.epochs"),
    (["trainer.iterations=null"], "trainer.iterations and trainer.epochs"),
    (["trainer.epochs=3"], "trainer.iterations and trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["trainer.batch_size=-1"], "trainer.batch_size"),
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size"),
    (["trainer.log_every=0"], "trainer.log_every"),
    (["trainer.checkpoint_every=0"], "trainer.checkpoint_every"),
    (["trainer.amp_dtype=float8"], "trainer.amp_dtype"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["optimizer.weight_decay=-1e-4"], "optimizer.weight_decay"),
    (["optimizer.momentum=1.0"], "optimizer.momentum"),
    (["optimizer.momentum=-0.1"], "optimizer.momentum"),
    (["optimizer.gamma=0"], "optimizer.gamma"),
    (["optimizer.gamma=1.5"], "optimizer.gamma"),
    (["optimizer.gamma=-1"], "optimizer.gamma"),
    (["optimizer.step_lr_scale=0"], "optimizer.step_lr_scale"),
    (["optimizer.milestones=[0.5,1.5]"], "optimizer.milestones[1]"),
    (["optimizer.milestones=[0]"], "optimizer.milestones[0]"),
    (["optimizer.name=adagrad"], "optimizer.name"),
    (["optimizer.schedule=linear"], "optimizer.schedule"),
    (["field.hidden=0"], "field.hidden"),
    (["field.depth=0"], "field.depth"),
    (["field.kernel=0"], "field.kernel"),
    (["field.groups=0"], "field.groups"),
    (["field.kind=transformer"], "field.kind"),
    (["field=conv", "field.kernel=4"], "field.kernel"),
    (["field.tied_init=true"], "field.tied_init"),
    (["field.untied=true", "solver=dopri5", "block=ode"], "field.untied"),
    (["model.width=0"], "model.width"),
    (["model.augment_dim=-1"], "model.augment_dim"),
    (["model.head=softmax"], "model.head"),
    (["model.stem=vit"], "model.stem"),
    (["model.stem=downsample"], "model.stem"),
    (["block.T=0"], "block.T"),
    (["block.T=-1"], "block.T"),
    (["block.T=inf"], "block.T"),
    (["block.kind=transformer"], "block.kind"),
    (["solver.steps=0"], "solver.steps"),
    (["solver.steps=null"], "solver.steps"),
    (["solver.name=rk45"], "solver.name"),
    (["solver.name=explicit_adams"], "solver.name"),
    (["solver=dopri5", "block=ode", "solver.rtol=0"], "solver.rtol"),
    (["solver=dopri5", "block=ode", "solver.atol=-1"], "solver.atol"),
    (["solver=dopri5", "block=ode", "solver.max_steps=0"], "solver.max_steps"),
    (["solver=dopri5", "solver.backend=jax"], "solver.backend"),
    (["solver.backend=odenet"], "solver.backend=odenet"),  # euler: odenet's own solve is dopri5's
    (["solver=dopri5", "solver.backend=odenet", "solver.adjoint=true"], "solver.backend=odenet"),
    (["solver=dopri5", "solver.backend=odenet", "field=linear", "trainer.ensemble=2"], "field.kind=mlp"),
    (["solver=dopri5", "block=plain"], "block.kind=plain"),
    (["solver=dopri5", "block=learned_steps"], "block.kind=learned_steps"),
    (["block=plain", "solver=rk4"], "block.kind=plain"),
    (["data.n_train=0"], "data.n_train"),
    (["data.n_test=0"], "data.n_test"),
    (["data.seed=-1"], "data.seed"),
    (["data.dim=0"], "data.dim"),
    (["data.noise=-0.1"], "data.noise"),
    (["data.crop_padding=-1"], "data.crop_padding"),
    (["data.augment=rotate"], "data.augment"),
    (["data.name=imagenet"], "data.name"),
    (["threads=0"], "threads"),
    (["device=tpu"], "device"),
    (["device=cuda:x"], "device"),
    (["adaptation.enabled=true", "adaptation.every=0"], "adaptation.every"),
    (["adaptation.enabled=true", "adaptation.threshold=-0.1"], "adaptation.threshold"),
    (["adaptation.enabled=true", "adaptation.threshold=2"], "adaptation.threshold"),
    (["adaptation.enabled=true", "adaptation.decrease=1"], "adaptation.decrease"),
    (["adaptation.enabled=true", "adaptation.increase=1"], "adaptation.increase"),
    (["adaptation.enabled=true", "adaptation.initial_step_size=0"], "adaptation.initial_step_size"),
    (["adaptation.enabled=true", "adaptation.min_step_size=-1"], "adaptation.min_step_size"),
    (["adaptation.enabled=true", "adaptation.accuracy_factor=0"], "adaptation.accuracy_factor"),
    (["adaptation.enabled=true", "adaptation.test_solver=dopri5"], "adaptation.test_solver"),
    (["adaptation.enabled=true", "adaptation.min_step_size=0.9", "adaptation.max_step_size=0.1"],
     "adaptation.min_step_size"),
    (["adaptation.enabled=true", "block=plain"], "adaptation.enabled"),
    (["adaptation.initial=guess"], "adaptation.initial"),
    (["adaptation.enabled=true", "adaptation.initial=Hairer"], "adaptation.initial"),
    # model.init=kaiming redraws the field after build_field: it would overwrite the field's own init
    (["model.init=kaiming", "field.zero_init=true"], "field.zero_init=true"),
    (["model.init=kaiming", "field.zero_init=true"], "model.init=kaiming"),
    (["model.init=kaiming", "field.init=he"], "field.init=he"),
    # model.arch=he: a staged net, no autocast, no field to analyse, no other evaluation scheme or step count
    (["+experiment=degradation_he", "trainer.amp=true"], "trainer.amp"),
    (["+experiment=degradation_he", "analysis.gradients=true"], "analysis.gradients"),
    (["+experiment=degradation_he", "analysis.trajectory=true"], "analysis.trajectory"),
    (["+experiment=degradation_he", "analysis.adaptive_steps=true"], "analysis.adaptive_steps"),
    (["+experiment=degradation_he", "analysis.depth=true"], "analysis.depth"),
    (["+experiment=degradation_he", "+evaluation.solvers=[{name: midpoint, step_factor: 1}]"], "evaluation.solvers[0]"),
    (["+experiment=degradation_he", "+evaluation.solvers=[{name: euler, steps: 6}]"], "evaluation.solvers[0]"),
    (["+experiment=degradation_he", "+evaluation.solvers=[{name: euler, step_factor: 1}, {name: euler, step_factor: 2}]"
      ], "evaluation.solvers[1]"),
    (["regularization.kinetic=-1"], "regularization.kinetic"),
    (["regularization.jacobian=-0.5"], "regularization.jacobian"),
    (["regularization.noise=sobol"], "regularization.noise"),
    (["regularization.kinetic=1", "block=plain"], "block=plain"),
    (["analysis.gradient_times=0"], "analysis.gradient_times"),
    (["analysis.grid=1"], "analysis.grid"),
    (["analysis.span=0"], "analysis.span"),
    (["analysis.hessian_iters=0"], "analysis.hessian_iters"),
    (["analysis.hessian_tol=0"], "analysis.hessian_tol"),
    (["analysis.trace_samples=1"], "analysis.trace_samples"),
    (["analysis.points=0"], "analysis.points"),
    (["analysis.adaptive_rtol=0"], "analysis.adaptive_rtol"),
    (["+evaluation.solvers=[{name: rk5, steps: 4}]"], "evaluation.solvers[0].name"),
    (["+evaluation.solvers=[{name: rk4, steps: 0}]"], "evaluation.solvers[0].steps"),
    (["+evaluation.solvers=[{name: rk4, step_factor: -1}]"], "evaluation.solvers[0].step_factor"),
    (["+evaluation.solvers=[{name: dopri5, rtol: 0}]"], "evaluation.solvers[0].rtol"),
    (["+trainer.foo=1"], "trainer.foo"),
    (["+fooo=1"], "fooo"),
    (["+data.rooot=/tmp"], "data.rooot"),
]


def test_he_evaluation_at_the_training_solver_passes():
    """The control of the refusals above: euler at the training steps, by count or by factor, is accepted."""
    steps = load_config(["+experiment=degradation_he"]).solver.steps
    validate(_config(["+experiment=degradation_he",
                      f"+evaluation.solvers=[{{name: euler, steps: {steps}}}, {{name: euler, step_factor: 1}}]"]))


def _config(overrides):
    return load_config([o.replace("+evaluation.solvers", "evaluation.solvers") for o in overrides])


@pytest.mark.parametrize("overrides, key", VALUE_CASES, ids=[" ".join(c[0]) for c in VALUE_CASES])
def test_bad_value_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        validate(_config(overrides))
    assert key in str(info.value)
    assert "\n" not in str(info.value)


# Composition errors the command line catches before Hydra starts a job (one line, the key named).
COMPOSE_CASES = [
    (["trainer.fooo=1"], "trainer.fooo"),
    (["+trainer.foo=1"], "trainer.foo"),
    (["++trainer.foo=1"], "trainer.foo"),
    (["fooo=1"], "fooo"),
    (["optimizer.lr=abc"], "optimizer.lr"),
    (["optimizer.lr=true"], "optimizer.lr"),
    (["seed=x"], "seed"),
    (["trainer.iterations="], "trainer.iterations"),
    (["trainer.progress=maybe"], "trainer.progress"),
    (["solver.steps=2.5"], "solver.steps"),
    (["data=nosuch"], "data"),
    (["field=nosuch"], "field"),
    (["+experiment=nosuch"], "experiment"),
    (["-m", "seed=0,1,x"], "seed"),
    (["-m", "solver.steps=2,4", "+trainer.bad=1"], "trainer.bad"),
    (["-m", "trainer.batchsize=1,2"], "trainer.batchsize"),
    (["seed=0=1"], "seed"),
]


@pytest.mark.parametrize("argv, key", COMPOSE_CASES, ids=[" ".join(c[0]) for c in COMPOSE_CASES])
def test_bad_command_line_is_one_line_naming_the_key(argv, key):
    error = precheck(argv)
    assert error is not None and key in error and "\n" not in error


def test_good_command_lines_pass_the_precheck():
    assert precheck([]) is None
    assert precheck(["+experiment=step_size_ablation", "+debug=smoke"]) is None
    assert precheck(["-m", "seed=0,1", "solver.steps=2,4", "hydra.sweep.dir=/tmp/x"]) is None


@pytest.mark.parametrize("args, key", [
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["+trainer.foo=1"], "trainer.foo"),
    (["data=nosuch"], "data"),
])
def test_cli_config_error_is_one_line_with_status_2(tmp_path, args, key):
    proc = subprocess.run([sys.executable, "-m", "odenet.run", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_precheck_needs_no_torch():
    code = ("import sys; from odenet.runner.config import precheck; "
            "assert precheck(['trainer.batch_size=0']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.strip()
    assert out == "False"


def test_a_data_choice_an_experiment_overrides_is_an_error_not_ignored():
    """``data=X`` that a later config (an experiment's task or setup file) overrides would train on other data."""
    error = precheck(["+experiment=block_lesion_mnist1d", "data=digits"])
    assert error and "data=digits" in error and "data.name=mnist1d" in error and "add data.name=digits" in error
    assert precheck(["+experiment=block_lesion_mnist1d", "data=digits", "data.name=digits"]) is None
    # the shared digits setup takes the data group's choice
    assert precheck(["+experiment=degradation", "data=mnist1d"]) is None
    assert load_config(["+experiment=degradation", "data=mnist1d"]).data.name == "mnist1d"
    assert load_config(["+experiment=regularization", "+reg_task=digits"]).data.name == "digits"
    assert load_config(["+experiment=learned_steps", "+learned_task=digits"]).data.name == "digits"
