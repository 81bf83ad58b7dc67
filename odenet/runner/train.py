"""Training and evaluation of one model from a config, writing everything into one output dir.

Files written: ``config.yaml`` (resolved), ``history.csv`` (per log step), ``checkpoint.pt``
(every ``trainer.checkpoint_every`` iterations, for resuming), ``model.pt`` (the trained
``state_dict``) and ``metrics.json`` (final numbers and one entry per evaluation solver).
Every file is written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from ..blocks import Block, ODEBlock, ResidualStack, SolverError
from ..data import Dataset, load_dataset
from ..models import Classifier, count_parameters, format_parameters, parameter_breakdown
from ..solvers import is_adaptive
from . import measure
from .accel import augment_images, compile_field, describe_precision, grad_scaler
from .adaptation import StepSizeAdaptation
from .build import build_model, build_optimizer, check_config, eval_options
from .config import Config
from .io import atomic_write, write_csv, write_json

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available: use device=auto or device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def total_iterations(cfg: Config, n_train: int) -> int:
    t = cfg.trainer
    if t.iterations is not None:
        return int(t.iterations)
    return int(t.epochs) * math.ceil(n_train / min(t.batch_size, n_train))


def _learned_step_sizes(model: Classifier) -> dict[str, float]:
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
        if isinstance(block, ODEBlock):
            raise block.solver_error(f"in the adjoint (backward) solve: {err}") from err
        raise


def loss_function(task: str) -> Callable[..., torch.Tensor]:
    """The training loss of a task: cross-entropy (classification) or mean squared error (regression)."""
    return F.mse_loss if task == "regression" else F.cross_entropy


@torch.no_grad()
def evaluate(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int, task: str = "classification"
) -> dict[str, float | None]:
    """Accuracy, mean loss and mean NFE per forward over ``(x, y)`` in batches.

    Classification: cross-entropy and accuracy; regression: the mean squared error (over samples and
    output features, as ``F.mse_loss``) and accuracy ``None``.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, nfes = 0, 0.0, []
    regression = task == "regression"
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = model(xb)
            nfes.append(model.block.nfe)
            if regression:
                loss_sum += float(F.mse_loss(out, yb, reduction="mean")) * len(xb)
            else:
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(-1) == yb).sum())
    finally:
        model.train(was_training)
    n = len(x)
    return {"accuracy": None if regression else correct / n, "loss": loss_sum / n, "nfe": float(np.mean(nfes))}


def _train_description(cfg: Config, model: Classifier) -> dict[str, Any]:
    """Training solver, steps and step size as the block now integrates (a fixed-grid ODE block: its step_size,
    and steps when ``T / step_size`` is an integer)."""
    block = model.block
    steps, step_size = None, None
    if isinstance(block, ResidualStack):
        steps, step_size = block.steps, cfg.block.T / block.steps
    elif isinstance(block, ODEBlock) and block.step_size is not None:
        step_size = float(block.step_size)
        n = cfg.block.T / step_size
        steps = round(n) if abs(n - round(n)) <= 1e-9 * n else None
    return {
        "solver": cfg.solver.name,
        "steps": steps,
        "step_size": step_size,
        "block": cfg.block.kind,
        "rtol": cfg.solver.rtol if is_adaptive(cfg.solver.name) else None,
    }


def run_evaluations(cfg: Config, model: Classifier, data: Dataset, device: torch.device) -> list[dict[str, Any]]:
    """The trained model under its training solver and every ``evaluation.solvers`` entry.

    A solver that fails (step-size underflow, too many steps, an option the block cannot take)
    gives an entry with ``status: failed`` and the reason; the others still run.
    """
    train = _train_description(cfg, model)
    x, y, bs = data.x_test.to(device), data.y_test.to(device), cfg.trainer.eval_batch_size
    train_key = (train["solver"], train["steps"]) if train["steps"] else (train["solver"], None, train["step_size"])
    entries: list[tuple[str, dict[str, Any], bool]] = [(cfg.solver.name, {}, True)]
    seen = {train_key}
    # Evaluations that would repeat the training integration exactly are skipped.
    same_integrator = cfg.block.kind in ("residual", "plain") or cfg.adaptation.enabled
    for ev in cfg.evaluation.solvers:
        try:
            options = eval_options(ev, train["steps"], train["step_size"])
        except ValueError as err:
            entries.append((ev.name, {"error": str(err)}, False))
            continue
        if "steps" in options:
            key: tuple[Any, ...] = (ev.name, options["steps"])
        elif "step_size" in options:
            key = (ev.name, None, options["step_size"])
        else:
            key = (ev.name, options["rtol"], options["atol"])
        if key in seen and not is_adaptive(ev.name) and same_integrator:
            continue  # the training solver itself, already evaluated
        seen.add(key)
        entries.append((ev.name, options, False))

    results = []
    for name, options, is_train in entries:
        steps = train["steps"] if is_train else options.get("steps")
        if is_train:
            step_size = train["step_size"]
        else:
            step_size = options.get("step_size", cfg.block.T / steps if steps else None)
        entry: dict[str, Any] = {
            "test_solver": name,
            "test_steps": steps,
            "test_step_size": step_size,
            "rtol": train["rtol"] if is_train else options.get("rtol"),
            "atol": (cfg.solver.atol if train["rtol"] is not None else None) if is_train else options.get("atol"),
            "accuracy": None, "loss": None, "nfe": None,
            "status": "ok", "reason": None, "is_train_solver": is_train,
        }
        try:
            if "error" in options:
                raise ValueError(options["error"])
            evaluated = model if is_train else model.with_solver(name, **options)
            entry.update(evaluate(evaluated, x, y, bs, data.task))
        except (SolverError, ValueError) as err:
            entry.update(status="failed", reason=str(err))
            log.warning("evaluation %s (%s) failed: %s", name, options, err)
        results.append(entry)
    return results


def train_and_evaluate(cfg: Config, out_dir: Path, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Train the configured model into ``out_dir`` (resuming from its checkpoint), then evaluate it.

    Returns the metrics written to ``metrics.json``. A diverged loss raises ``TrainingDiverged``
    and a failed training solve ``SolverError``, after ``metrics.json`` records the failure.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True)))
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    d = cfg.data
    data = load_dataset(
        d.name, root=d.root, n_train=d.n_train, n_test=d.n_test, seed=d.seed, dim=d.dim, noise=d.noise,
        as_images=d.as_images, synthetic=d.synthetic,
    )
    model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    if cfg.trainer.compile:
        compile_field(model)  # in place: state_dict keys unchanged, shared by every with_solver block
    loss_fn = loss_function(data.task)
    regression = data.task == "regression"
    if regression and cfg.adaptation.enabled:
        raise ValueError("adaptation.enabled=true compares accuracies: it needs a classification data set")
    n_analysis = min(cfg.analysis.points, len(data.x_train))
    x_analysis, y_analysis = data.x_train[:n_analysis].to(device), data.y_train[:n_analysis].to(device)
    # Measured before any checkpoint is loaded: the freshly seeded model is the one at initialisation.
    analysis: dict[str, Any] = (
        measure.at_init(model, x_analysis, y_analysis, loss_fn, cfg.analysis) if measure.enabled(cfg.analysis) else {}
    )
    adapter = StepSizeAdaptation.from_config(cfg) if cfg.adaptation.enabled else None
    if adapter is not None:
        adapter.attach(model)  # a fixed-grid ODE block on the same field, at the initial step size
    total = total_iterations(cfg, len(data.x_train))
    optimizer, scheduler = build_optimizer(cfg, model, total)
    sampler = BatchSampler(len(data.x_train), cfg.trainer.batch_size, cfg.seed)
    metrics: dict[str, Any] = {
        "status": "running", "reason": None, "seed": cfg.seed, "overrides": dict(overrides or {}),
        "task": data.task,
        "train": {**_train_description(cfg, model), "iterations": total, "parameters": count_parameters(model),
                  "parameter_breakdown": parameter_breakdown(model)},
        "evaluations": [],
    }
    log.info(
        "odenet: %s on %s (%d train / %d test), %s block, solver %s, %d parameters, %d iterations, device %s",
        cfg.field.kind, d.name, len(data.x_train), len(data.x_test), cfg.block.kind, cfg.solver.name,
        metrics["train"]["parameters"], total, device,
    )
    log.info("parameters: %s; precision: %s", format_parameters(metrics["train"]["parameter_breakdown"]),
             describe_precision(model))
    scaler = grad_scaler(model, device)  # a pass-through unless trainer.amp_dtype=float16

    history: list[dict[str, Any]] = []
    start, window = 0, {"loss": 0.0, "correct": 0, "seen": 0, "count": 0}
    checkpoint_path = out_dir / "checkpoint.pt"
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        start, history, window = int(state["iteration"]), list(state["history"]), dict(state["window"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if adapter is not None and "adaptation" in state:
            adapter.load_state_dict(state["adaptation"])
            adapter.attach(model)
        log.info("resuming from %s at iteration %d of %d", checkpoint_path, start, total)

    def save_checkpoint(iteration: int) -> None:
        save_torch(checkpoint_path, {
            "iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": history, "window": window,
            **({"adaptation": adapter.state_dict()} if adapter is not None else {}),
            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
        })

    def write_history() -> None:
        write_csv(out_dir / "history.csv", history)
        if adapter is not None and adapter.decisions:
            write_csv(out_dir / "adaptation.csv", adapter.decisions)

    weights = {name: getattr(cfg.regularization, name) for name in model.block.regularizers}
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, total), initial=start, total=total, desc="train", dynamic_ncols=True,
        disable=(not cfg.trainer.progress) or None,  # None: shown only on a terminal
        file=sys.stderr,
    )
    model.train()
    try:
        for it in bar:
            idx = sampler.next().to(device)
            xb, yb = x_train[idx], y_train[idx]
            xb = augment_images(xb, cfg.data.augment, cfg.data.crop_padding)  # on the device; "none": xb itself
            logits = model(xb)
            task_loss = loss_fn(logits, yb)
            penalties = model.block.regularization  # integrated alongside the state (empty when unweighted)
            loss = task_loss + sum(weights[name] * value for name, value in penalties.items())
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the training loss became {float(loss.detach())} at iteration {it + 1}: lower optimizer.lr "
                    f"(now {cfg.optimizer.lr:g}) or use a smaller step (solver.steps / solver.rtol)"
                )
            nfe_forward = model.block.nfe
            optimizer.zero_grad(set_to_none=True)
            backward(model, scaler.scale(loss))
            if adapter is not None:  # before the update: the check sees the weights that gave these logits
                adapter.on_iteration(it + 1, model, xb, yb, logits, nfe_forward)
            scaler.step(optimizer)  # optimizer.step() (float16: unscaled, skipped on inf/nan gradients)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            window["loss"] += float(task_loss.detach()) * len(idx)
            for name, value in penalties.items():
                window[name] = window.get(name, 0.0) + float(value.detach())
            if not regression:
                window["correct"] += int((logits.argmax(-1) == yb).sum())
            window["seen"] += len(idx)
            window["count"] += 1
            done = it + 1
            if done % cfg.trainer.log_every == 0 or done == total:
                row = {
                    "iteration": done,
                    "epoch": round(done * sampler.batch_size / len(x_train), 4),
                    "loss": window["loss"] / window["seen"],
                    "accuracy": None if regression else window["correct"] / window["seen"],
                    **solver_columns(model.block, nfe_forward),
                    **{name: window[name] / window["count"] for name in weights},
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - t0, 3),
                    **(adapter.history_columns() if adapter is not None else {}),
                    **_learned_step_sizes(model),
                }
                history.append(row)
                window = {"loss": 0.0, "correct": 0, "seen": 0, "count": 0}
                write_history()
                bar.set_postfix(loss=f"{row['loss']:.4f}", nfe=nfe_forward)
            if done % cfg.trainer.checkpoint_every == 0 or done == total:
                save_checkpoint(done)
    except (TrainingDiverged, SolverError) as err:
        metrics.update(status="failed", reason=str(err))
        write_json(out_dir / "metrics.json", metrics)
        raise
    finally:
        bar.close()

    save_torch(out_dir / "model.pt", model.state_dict())
    train_eval = evaluate(model, x_train, y_train, cfg.trainer.eval_batch_size, data.task)
    metrics["train"].update(
        **_train_description(cfg, model),  # the final step size, after adaptation
        **({"adaptation": adapter.summary()} if adapter is not None else {}),
        final_loss=history[-1]["loss"] if history else None,
        final_accuracy=history[-1]["accuracy"] if history else None,
        train_loss=train_eval["loss"], train_accuracy=train_eval["accuracy"],
        **({"step_sizes": list(_learned_step_sizes(model).values())} if _learned_step_sizes(model) else {}),
    )
    metrics["evaluations"] = run_evaluations(cfg, model, data, device)
    if measure.enabled(cfg.analysis):
        init_state = analysis.pop("_init_state", None)  # taken before any checkpoint was loaded: the init
        analysis.update(measure.after_training(model, x_analysis, y_analysis, loss_fn, cfg.analysis, init_state))
        metrics["analysis"] = analysis
    metrics["status"] = "ok"
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def load_model(run_dir: Path, cfg: Config | None = None, device: str = "cpu") -> Classifier:
    """Rebuild the model of a finished run and load its ``model.pt`` (``weights_only=True``)."""
    from .rundir import RunDir

    run = RunDir(run_dir)
    if cfg is not None:
        run.__dict__["config"] = cfg
    return run.load_model(device)
