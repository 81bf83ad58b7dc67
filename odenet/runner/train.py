"""One run from a config: validate, build, train, evaluate, measure, write — into one run folder (``RunDir``).

Files written: ``config.yaml`` (resolved), ``history.csv`` (per log step), ``checkpoint.pt`` (every
``trainer.checkpoint_every`` iterations, for resuming), ``model.pt`` (the trained ``state_dict``) and
``metrics.json`` (final numbers and one entry per evaluation solver). Nothing is written before the config,
the data and the model have passed every check; every file is written atomically.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ..blocks import NonFiniteStateError, SolverError
from ..data import Dataset, load_dataset
from ..models import Classifier, count_parameters, format_parameters, parameter_breakdown
from . import measure
from .accel import apply_threads, compile_block, describe_precision, grad_scaler, resolve_device, seed_everything
from .adaptation import StepSizeAdaptation
from .build import build_model, build_optimizer
from .config import Config
from .evaluate import NonFiniteOutput, evaluate, run_evaluations, train_record
from .growth import Growth
from .loop import (
    BatchSampler,
    Trainer,
    TrainingDiverged,
    TrainState,
    learned_step_sizes,
    loss_function,
    total_iterations,
)
from .rundir import Metrics, RunDir, RunDirError, fingerprint
from .tracking import make_tracker
from .validate import ConfigError, validate

__all__ = ["TrainingDiverged", "load_data", "load_model", "train_and_evaluate"]

log = logging.getLogger(__name__)


def load_data(cfg: Config) -> Dataset:
    """The configured data set (a ConfigError when it cannot serve this config)."""
    d = cfg.data
    data = load_dataset(
        d.name, root=d.root, n_train=d.n_train, n_test=d.n_test, seed=d.seed, dim=d.dim, noise=d.noise,
        as_images=d.as_images, synthetic=d.synthetic,
    )
    if data.task == "regression" and cfg.adaptation.enabled:
        raise ConfigError("adaptation.enabled=true compares accuracies: it needs a classification data set")
    if d.validation > 0:
        try:
            data = data.split_validation(d.validation, d.seed)
        except ValueError as err:
            raise ConfigError(f"data.validation: {err}") from None
    return data


def majority_accuracy(data: Dataset) -> float | None:
    """The test accuracy of always predicting the most frequent training class (None for regression)."""
    if data.task != "classification":
        return None
    majority = int(torch.bincount(data.y_train, minlength=data.num_classes).argmax())
    return float((data.y_test == majority).float().mean())


def train_and_evaluate(cfg: Config, out_dir: Path, overrides: dict[str, str] | None = None) -> Metrics:
    """Train the configured model into ``out_dir`` (resuming from its checkpoint), then evaluate it.

    Returns the metrics written to ``metrics.json``. Bad config or data raise before anything is written; a
    diverged loss raises ``TrainingDiverged`` and a failed training solve ``SolverError``, after ``metrics.json``
    records the failure.
    """
    validate(cfg)
    resolved: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)  # type: ignore[assignment]
    run, key = RunDir(out_dir), fingerprint(resolved)
    device = resolve_device(cfg.device)
    with run.lock():
        apply_threads(cfg.threads)  # auto: 1; in every process a run starts in (joblib workers too)
        seed_everything(cfg.seed)
        data = load_data(cfg)
        model = build_model(cfg, data.input_shape, data.num_classes).to(device)
        checkpoint = run.check_resume(key, resolved)
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True))  # the first write: every check has passed
        return _train(cfg, run, key, model, data, device, checkpoint, overrides or {})


def _train(cfg: Config, run: RunDir, key: str, model: Classifier, data: Dataset, device: torch.device,
           checkpoint: dict[str, Any] | None, overrides: dict[str, str]) -> Metrics:
    job = prepare(cfg, run, key, model, data, device, checkpoint, overrides)
    return finish(job, lambda: job.trainer.fit(job.state, job.x_train, job.y_train, data.task))


@dataclass
class Job:
    """A run built, measured at init and (when resuming) restored by :func:`prepare`, ready to train."""

    cfg: Config
    run: RunDir
    model: Classifier
    data: Dataset
    device: torch.device
    trainer: Trainer
    state: TrainState
    metrics: Metrics
    analysis: dict[str, Any]
    loss_fn: Callable[..., torch.Tensor]
    x_analysis: torch.Tensor
    y_analysis: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor


def prepare(cfg: Config, run: RunDir, key: str, model: Classifier, data: Dataset, device: torch.device,
            checkpoint: dict[str, Any] | None, overrides: dict[str, str]) -> Job:
    """Everything before training: measurements at init, optimiser, trainer, the metrics so far, resuming."""
    if cfg.trainer.compile:
        compile_block(model)  # the block's whole solve; state_dict keys unchanged; with_solver copies compiled too
    loss_fn = loss_function(data.task)
    n_analysis = min(cfg.analysis.points, len(data.x_train))
    x_analysis, y_analysis = data.x_train[:n_analysis].to(device), data.y_train[:n_analysis].to(device)
    # Measured before any checkpoint is loaded: the freshly seeded model is the one at initialisation.
    analysis = measure.at_init(model, x_analysis, y_analysis, loss_fn, cfg.analysis) if measure.enabled(
        cfg.analysis) else {}
    adapter = StepSizeAdaptation.from_config(cfg) if cfg.adaptation.enabled else None
    if adapter is not None:
        adapter.initialize(model, data.x_train[:cfg.trainer.batch_size].to(device), cfg.adaptation.initial)
        adapter.attach(model)  # a fixed-grid ODE block on the same field, at the initial step size
    total = total_iterations(cfg, len(data.x_train))
    optimizer, scheduler = build_optimizer(cfg, model, total)
    trainer = Trainer(cfg, model, optimizer, scheduler, BatchSampler(len(data.x_train), cfg.trainer.batch_size,
                      cfg.seed), grad_scaler(model, device), adapter, run, key, total)
    if cfg.growth.mode != "none":  # set before restoring: a checkpoint taken after the growth holds a grown block
        trainer.growth = Growth(cfg, total, data.x_train.to(device), data.y_train.to(device), x_analysis, data.task)
    metrics: Metrics = {
        "status": "running", "reason": None, "seed": cfg.seed, "overrides": dict(overrides), "task": data.task,
        "threads": torch.get_num_threads(), "fingerprint": key, "smoke": bool(cfg.smoke),
        "baseline_accuracy": majority_accuracy(data),
        "train": {**train_record(cfg, model), "iterations": total, "parameters": count_parameters(model),
                  "parameter_breakdown": parameter_breakdown(model)},
        "evaluations": [],
    }
    log.info(
        "odenet: %s on %s (%d train / %d test), %s block, solver %s, %d parameters, %d iterations, device %s",
        cfg.field.kind, cfg.data.name, len(data.x_train), len(data.x_test), cfg.block.kind, cfg.solver.name,
        metrics["train"]["parameters"], total, device,
    )
    log.info("parameters: %s; precision: %s", format_parameters(metrics["train"]["parameter_breakdown"]),
             describe_precision(model))
    state = TrainState()
    if checkpoint is not None:
        state = trainer.restore(checkpoint)
        if state.iteration > total:
            raise RunDirError(f"{run.path} holds a run trained for {state.iteration} iterations, more than the "
                              f"{total} asked: give this run another output folder, or delete its checkpoint.pt")
        log.info("resuming from %s at iteration %d of %d", run.file(run.CHECKPOINT), state.iteration, total)

    trainer.tracker = make_tracker(cfg.logger, run.path, state.iteration)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    return Job(cfg, run, model, data, device, trainer, state, metrics, analysis, loss_fn, x_analysis, y_analysis,
               x_train, y_train)


def finish(job: Job, fit: Callable[[], TrainState]) -> Metrics:
    """Train (``fit()`` returns the final state), then evaluate, measure and write ``metrics.json``."""
    cfg, run, model, data, device, metrics, analysis = (job.cfg, job.run, job.model, job.data, job.device,
                                                        job.metrics, job.analysis)
    adapter, loss_fn, x_train, y_train = job.trainer.adapter, job.loss_fn, job.x_train, job.y_train
    x_analysis, y_analysis = job.x_analysis, job.y_analysis
    try:
        state = fit()
        train_eval = evaluate(model, x_train, y_train, cfg.trainer.eval_batch_size, data.task)
    except (TrainingDiverged, SolverError, NonFiniteOutput, NonFiniteStateError) as err:
        if isinstance(err, (NonFiniteOutput, NonFiniteStateError)):
            err = TrainingDiverged(f"the model blew up in training (lower optimizer.lr = {cfg.optimizer.lr:g}): {err}")
        metrics.update(status="failed", reason=str(err))
        run.write_metrics(metrics)
        raise err from None

    run.save_model(model.state_dict())
    history, steps = state.history, learned_step_sizes(model)
    metrics["train"].update(
        **train_record(cfg, model),  # the final step size, after adaptation
        **({"adaptation": adapter.summary()} if adapter is not None else {}),
        final_loss=history[-1]["loss"] if history else None,
        final_accuracy=history[-1]["accuracy"] if history else None,
        train_loss=train_eval["loss"], train_accuracy=train_eval["accuracy"],
        **({"step_sizes": list(steps.values())} if steps else {}),
    )
    if job.trainer.growth is not None:
        metrics["train"]["growth"] = job.trainer.growth.record
    if data.x_val is not None and data.y_val is not None:
        metrics["validation"] = evaluate(model, data.x_val.to(device), data.y_val.to(device),
                                         cfg.trainer.eval_batch_size, data.task)
    metrics["evaluations"] = run_evaluations(cfg, model, data, device)
    if measure.enabled(cfg.analysis):
        init_state = analysis.pop("_init_state", None)  # taken before any checkpoint was loaded: the init
        test = (data.x_test.to(device), data.y_test.to(device))
        analysis.update(measure.after_training(model, x_analysis, y_analysis, loss_fn, cfg.analysis, init_state, test))
        metrics["analysis"] = analysis
    metrics["status"] = "ok"
    run.write_metrics(metrics)
    return metrics


def objective(cfg: Config, metrics: Metrics) -> float | list[float] | None:
    """What the job returns to Hydra's sweeper: the ``objective`` values (one, or a list)."""
    train_eval = metrics["evaluations"][0] if metrics.get("evaluations") else {}
    validation = metrics.get("validation") or {}
    source = {
        "test_accuracy": train_eval.get("accuracy"), "test_loss": train_eval.get("loss"),
        "validation_accuracy": validation.get("accuracy"), "validation_loss": validation.get("loss"),
        "train_loss": metrics.get("train", {}).get("train_loss"), "nfe": train_eval.get("nfe"),
    }
    values = [source[name] for name in cfg.objective]
    return values[0] if len(values) == 1 else values  # type: ignore[return-value]


def load_model(run_dir: Path, cfg: Config | None = None, device: str = "cpu") -> Classifier:
    """Rebuild the model of a finished run and load its ``model.pt`` (``weights_only=True``)."""
    run = RunDir(run_dir)
    if cfg is not None:
        run.__dict__["config"] = cfg
    return run.load_model(device)
