"""Evaluation of a trained model: under its training integrator and every ``evaluation.solvers`` entry."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..blocks import SolverError
from ..data import Dataset
from ..integrator import Integrator
from ..models import Classifier
from ..solvers import is_adaptive
from .config import Config, EvalSolverConfig
from .rundir import EvaluationRecord, TrainRecord

log = logging.getLogger(__name__)

DEFAULT_EVAL_RTOL, DEFAULT_EVAL_ATOL = 1e-6, 1e-8


class NonFiniteOutput(ValueError):
    """An evaluation whose loss or outputs are not finite: the model's numbers there mean nothing."""


@torch.no_grad()
def evaluate(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int, task: str = "classification"
) -> dict[str, float | None]:
    """Accuracy, mean loss and mean NFE per forward over ``(x, y)`` in batches.

    Classification: cross-entropy and accuracy; regression: the mean squared error (over samples and
    output features, as ``F.mse_loss``) and accuracy ``None``. Non-finite outputs raise :class:`NonFiniteOutput`.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, nfes = 0, 0.0, []
    regression = task == "regression"
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb)
            if not bool(torch.isfinite(out).all()):
                raise NonFiniteOutput("the model's outputs are not finite (the solve blew up)")
            nfes.append(model.block.nfe)
            if regression:
                loss_sum += float(F.mse_loss(out, yb, reduction="mean")) * len(xb)
            else:
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(-1) == yb).sum())
    finally:
        model.train(was_training)
    n = len(x)
    if not math.isfinite(loss_sum):
        raise NonFiniteOutput(f"the loss is {loss_sum / n} (not finite)")
    return {"accuracy": None if regression else correct / n, "loss": loss_sum / n, "nfe": float(np.mean(nfes))}


def train_integrator(cfg: Config, model: Classifier) -> Integrator:
    """The integrator the model's block now uses (after any step-size adaptation), with the config's tolerances."""
    it = Integrator.of(model.block)
    return Integrator(cfg.solver.name, steps=it.steps, step_size=it.step_size, rtol=it.rtol, atol=it.atol,
                      adjoint=it.adjoint)


def train_record(cfg: Config, model: Classifier) -> TrainRecord:
    """Training solver, steps and step size as the block now integrates (a fixed-grid ODE block: its step_size,
    and steps when ``T / step_size`` is an integer)."""
    it, T = train_integrator(cfg, model), getattr(model.block, "T", cfg.block.T)  # a grown block's own T
    return {"solver": it.name, "steps": it.steps_on(T), "step_size": it.h(T), "block": cfg.block.kind,
            "rtol": cfg.solver.rtol if it.adaptive else None}


def eval_integrator(ev: EvalSolverConfig, train_steps: int | None, train_step_size: float | None = None) -> Integrator:
    """The integrator of one evaluation entry (steps from ``step_factor`` x the training step).

    A training step that is no ``T / N`` (``train_steps`` None, ``train_step_size`` h, as after step-size
    adaptation) gives ``step_size = step_factor x h``: a torchdiffeq fixed grid.
    """
    if is_adaptive(ev.name):
        return Integrator(ev.name, rtol=ev.rtol if ev.rtol is not None else DEFAULT_EVAL_RTOL,
                          atol=ev.atol if ev.atol is not None else DEFAULT_EVAL_ATOL)
    if ev.steps is not None:
        return Integrator(ev.name, steps=ev.steps)
    if ev.step_factor is not None:
        if train_steps is None and train_step_size is None:
            raise ValueError(f"evaluation {ev.name} with step_factor needs a fixed-step training solver; give steps")
        if ev.step_factor <= 0:
            raise ValueError(f"evaluation step_factor must be positive, got {ev.step_factor}")
        if train_steps is None:
            return Integrator(ev.name, step_size=train_step_size * ev.step_factor)
        return Integrator(ev.name, steps=max(1, round(train_steps / ev.step_factor)))
    raise ValueError(f"evaluation {ev.name}: give steps or step_factor")


def eval_options(ev: EvalSolverConfig, train_steps: int | None, train_step_size: float | None = None) -> dict[str, Any]:
    """``with_solver`` options of one evaluation entry (see :func:`eval_integrator`)."""
    return eval_integrator(ev, train_steps, train_step_size).options()


def _identity(it: Integrator) -> tuple[Any, ...]:
    if it.adaptive:
        return (it.name, it.rtol, it.atol)
    return (it.name, it.steps) if it.steps is not None else (it.name, None, it.step_size)


def run_evaluations(cfg: Config, model: Classifier, data: Dataset, device: torch.device) -> list[EvaluationRecord]:
    """The trained model under its training solver and every ``evaluation.solvers`` entry.

    A solver that fails (step-size underflow, too many steps, an option the block cannot take, a non-finite
    output) gives an entry with ``status: failed`` and the reason; the others still run.
    """
    T = getattr(model.block, "T", cfg.block.T)  # a grown block's own T (growth.mode)
    train = train_integrator(cfg, model)
    train_steps, train_h = train.steps_on(T), train.h(T)
    x, y, bs = data.x_test.to(device), data.y_test.to(device), cfg.trainer.eval_batch_size
    train_key = (train.name, train_steps) if train_steps else (train.name, None, train_h)
    entries: list[tuple[str, Integrator | str, bool]] = [(train.name, train, True)]
    seen = {train_key}
    # Evaluations that would repeat the training integration exactly are skipped.
    same_integrator = cfg.block.kind in ("residual", "plain") or cfg.adaptation.enabled
    for ev in cfg.evaluation.solvers:
        try:
            it = eval_integrator(ev, train_steps, train_h)
        except ValueError as err:
            entries.append((ev.name, str(err), False))
            continue
        key = _identity(it)
        if key in seen and not it.adaptive and same_integrator:
            continue  # the training solver itself, already evaluated
        seen.add(key)
        entries.append((ev.name, it, False))

    results: list[EvaluationRecord] = []
    for name, it, is_train in entries:
        entry: EvaluationRecord = {
            "test_solver": name, "test_steps": None, "test_step_size": None, "rtol": None, "atol": None,
            "accuracy": None, "loss": None, "nfe": None, "status": "ok", "reason": None, "is_train_solver": is_train,
        }
        try:
            if isinstance(it, str):
                raise ValueError(it)
            steps = it.steps_on(T) if is_train else it.steps
            entry["test_steps"], entry["test_step_size"] = steps, it.h(T)
            if it.adaptive:
                entry["rtol"] = cfg.solver.rtol if is_train else it.rtol
                entry["atol"] = cfg.solver.atol if is_train else it.atol
            evaluated = model if is_train else model.with_solver(name, **it.options())
            result = evaluate(evaluated, x, y, bs, data.task)
            entry["accuracy"], entry["loss"], entry["nfe"] = result["accuracy"], result["loss"], result["nfe"]
        except (SolverError, ValueError) as err:
            entry["status"], entry["reason"] = "failed", str(err)
            log.warning("evaluation %s failed: %s", it if isinstance(it, str) else it.label(T), err)
        results.append(entry)
    return results
