"""The training loop over already-built objects: batches, loss with penalties, optimiser step, logging, checkpoints."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..blocks import Block, ODEBlock, ResidualStack, raised_by_field
from ..models import Classifier
from .accel import augment_images, compiled_training_loss, load_optimizer_state
from .adaptation import StepSizeAdaptation
from .config import Config
from .rundir import RunDir

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or the learning rate left its range."""


class BatchSampler:
    """Shuffled mini-batches over ``n`` examples, epoch after epoch, with a resumable state."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"], int(state["pos"])


def diverged(loss: float, iteration: int, cfg: Config) -> TrainingDiverged:
    """The error of a training loss that is no longer finite."""
    return TrainingDiverged(f"the training loss became {loss} at iteration {iteration}: lower optimizer.lr "
                            f"(now {cfg.optimizer.lr:g}) or use a smaller step (solver.steps / solver.rtol)")


def total_iterations(cfg: Config, n_train: int) -> int:
    t = cfg.trainer
    if t.iterations is not None:
        return int(t.iterations)
    return int(t.epochs) * math.ceil(n_train / min(t.batch_size, n_train))


def loss_function(task: str) -> Callable[..., torch.Tensor]:
    """The training loss of a task: cross-entropy (classification) or mean squared error (regression)."""
    return F.mse_loss if task == "regression" else F.cross_entropy


def learned_step_sizes(model: Classifier) -> dict[str, float]:
    block = model.block
    if isinstance(block, ResidualStack) and block.learn_steps:
        return {f"h_{k}": float(h) for k, h in enumerate(block.step_sizes.detach().cpu())}
    return {}


def solver_columns(block: Block, nfe_forward: int) -> dict[str, Any]:
    """``history.csv`` columns of one iteration's solve: NFE forward and backward, accepted and rejected steps
    (forward, and backward for an adjoint solve) and, for an adaptive solver, the accepted step sizes in order
    (space-separated). ``nfe_forward`` is read before the backward pass (an adjoint block's forward count
    stays, but the adaptation check of the same iteration runs other solves)."""
    stats = dict(block.stats)
    columns: dict[str, Any] = {"nfe_forward": nfe_forward, "nfe_backward": stats.pop("nfe_backward", 0)}
    stats.pop("nfe", None)
    columns.update(stats)
    if isinstance(block, ODEBlock) and block.adaptive:
        columns["step_sizes"] = " ".join(f"{h:.6g}" for h in block.step_sizes.tolist())
    return columns


def backward(model: Classifier, loss: torch.Tensor) -> None:
    """``loss.backward()``, with a failed adjoint solve (torchdiffeq asserts) turned into a ``SolverError``."""
    try:
        loss.backward()
    except AssertionError as err:
        block = model.block
        if raised_by_field(err):
            raise  # the user's own field: unchanged
        if isinstance(block, ODEBlock):
            raise block.solver_error(f"in the adjoint (backward) solve: {err}") from err
        raise


def _logits_and_loss(x: torch.Tensor, y: torch.Tensor, model: Classifier, loss_fn: Callable[..., torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    return logits, loss_fn(logits, y)


def _new_window() -> dict[str, Any]:
    return {"loss": 0.0, "correct": 0, "seen": 0, "count": 0}


@dataclass
class TrainState:
    """Everything a checkpoint restores: where training is, and the logged history."""

    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=_new_window)


@dataclass
class Trainer:
    """The objects a training run is built from (built and validated before this is made)."""

    cfg: Config
    model: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: BatchSampler
    scaler: Any
    adapter: StepSizeAdaptation | None
    run: RunDir
    fingerprint: str
    total: int
    tracker: Any = None  # odenet.runner.tracking: gets every logged row
    growth: Any = None  # odenet.runner.growth.Growth: grows the block once (config section growth)

    def checkpoint(self, state: TrainState) -> dict[str, Any]:
        out = {
            "iteration": state.iteration, "fingerprint": self.fingerprint, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "sampler": self.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": state.history, "window": state.window,
        }
        if self.adapter is not None:
            out["adaptation"] = self.adapter.state_dict()
        if self.growth is not None:
            out["growth"] = self.growth.state_dict()
        if self.scaler.is_enabled():
            out["scaler"] = self.scaler.state_dict()
        return out

    def restore(self, ckpt: dict[str, Any]) -> TrainState:
        if self.growth is not None:  # a checkpoint taken after the growth: the grown structure first
            self.growth.load_state_dict(ckpt.get("growth"), self)
        self.model.load_state_dict(ckpt["model"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"])  # this run's fused / foreach, not the saved ones
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.adapter is not None and "adaptation" in ckpt:
            self.adapter.load_state_dict(ckpt["adaptation"])
            self.adapter.attach(self.model)
        return TrainState(int(ckpt["iteration"]), list(ckpt["history"]), dict(ckpt["window"]))

    def _write_history(self, state: TrainState) -> None:
        self.run.write_history(state.history)
        if self.adapter is not None and self.adapter.decisions:
            self.run.write_adaptation(self.adapter.decisions)

    def history_row(self, state: TrainState, n_train: int, regression: bool, block: Block, nfe_forward: int,
                    weights: dict[str, float], t0: float) -> dict[str, Any]:
        """Log step ``state.iteration``: its ``history.csv`` row from the window (then reset), written and tracked.

        ``block``: the block whose solver statistics the row reports (the model's, or an ensemble's template)."""
        window, done, model, adapter = state.window, state.iteration, self.model, self.adapter
        row = {
            "iteration": done,
            "epoch": round(done * self.sampler.batch_size / n_train, 4),
            "loss": window["loss"] / window["seen"],
            "accuracy": None if regression else window["correct"] / window["seen"],
            **solver_columns(block, nfe_forward),
            **{name: window[name] / window["count"] for name in weights},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
            **(adapter.history_columns() if adapter is not None else {}),
            **learned_step_sizes(model),
        }
        state.history.append(row)
        if self.tracker is not None:
            self.tracker.log(row)
        state.window = _new_window()
        self._write_history(state)
        return row

    def forward_loss(self, loss_fn: Callable[..., torch.Tensor], weighted: bool
                     ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``x, y -> (logits, task loss)``; ``trainer.compile`` compiles both as one graph (its backward with it)
        when the block is compiled, unpenalised (``weighted`` false), float32 and not changed during the run (no
        step-size adaptation or growth: each change would compile anew); else the model's own call."""
        model = self.model
        fixed = self.adapter is None and self.growth is None
        if self.cfg.trainer.compile and model.block.compiled and not weighted and model.amp_dtype is None and fixed:
            return compiled_training_loss(_logits_and_loss, model, loss_fn)
        return lambda x, y: _logits_and_loss(x, y, model, loss_fn)

    def fit(self, state: TrainState, x_train: torch.Tensor, y_train: torch.Tensor, task: str) -> TrainState:
        """Train from ``state.iteration`` to ``total``, logging every ``trainer.log_every`` and checkpointing."""
        cfg, model, adapter = self.cfg, self.model, self.adapter
        loss_fn, regression = loss_function(task), task == "regression"
        weights = {name: getattr(cfg.regularization, name) for name in model.block.regularizers}
        forward_loss = self.forward_loss(loss_fn, bool(weights))
        device = x_train.device
        t0 = time.perf_counter()
        bar = tqdm(
            range(state.iteration, self.total), initial=state.iteration, total=self.total, desc="train",
            dynamic_ncols=True, disable=(not cfg.trainer.progress) or None,  # None: shown only on a terminal
            file=sys.stderr,
        )
        model.train()
        window = state.window
        try:
            for it in bar:
                if self.growth is not None:
                    self.growth.before_iteration(it, self)
                idx = self.sampler.next().to(device)
                xb, yb = x_train[idx], y_train[idx]
                xb = augment_images(xb, cfg.data.augment, cfg.data.crop_padding)  # on the device; none: xb itself
                logits, task_loss = forward_loss(xb, yb)
                penalties = model.block.regularization  # integrated alongside the state (empty when unweighted)
                loss = task_loss + sum(weights[name] * value for name, value in penalties.items())
                if not torch.isfinite(loss):
                    raise diverged(float(loss.detach()), it + 1, cfg)
                nfe_forward = model.block.nfe
                self.optimizer.zero_grad(set_to_none=True)
                backward(model, self.scaler.scale(loss))
                if adapter is not None:  # before the update: the check sees the weights that gave these logits
                    adapter.on_iteration(it + 1, model, xb, yb, logits, nfe_forward)
                self.scaler.step(self.optimizer)  # optimizer.step() (float16: unscaled, skipped on inf/nan grads)
                self.scaler.update()
                if self.scheduler is not None:
                    self.scheduler.step()
                    lr = self.optimizer.param_groups[0]["lr"]
                    if not (math.isfinite(lr) and lr >= 0):
                        raise TrainingDiverged(f"the schedule {cfg.optimizer.schedule} gave learning rate {lr} at "
                                               f"iteration {it + 1}: check optimizer.gamma / optimizer.milestones")
                window["loss"] += float(task_loss.detach()) * len(idx)
                for name, value in penalties.items():
                    window[name] = window.get(name, 0.0) + float(value.detach())
                if not regression:
                    window["correct"] += int((logits.argmax(-1) == yb).sum())
                window["seen"] += len(idx)
                window["count"] += 1
                done = state.iteration = it + 1
                if done % cfg.trainer.log_every == 0 or done == self.total:
                    row = self.history_row(state, len(x_train), regression, model.block, nfe_forward, weights, t0)
                    window = state.window
                    bar.set_postfix(loss=f"{row['loss']:.4f}", nfe=nfe_forward)
                    if bar.disable:  # no terminal (Slurm, nohup, a file): one log line per log step instead
                        acc = "" if row["accuracy"] is None else f"  accuracy {row['accuracy']:.4f}"
                        log.info("iteration %d/%d  loss %.4f%s  nfe %d  %.1f s", done, self.total, row["loss"], acc,
                                 nfe_forward, row["seconds"])
                if done % cfg.trainer.checkpoint_every == 0 or done == self.total:
                    self.run.save_checkpoint(self.checkpoint(state))
        finally:
            bar.close()
            if self.tracker is not None:
                self.tracker.close()
        return state
