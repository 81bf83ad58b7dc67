"""The run folder: the one reader and writer of what a run leaves behind.

A run folder holds one run: ``config.yaml`` (the resolved config), ``history.csv`` (one row per log step),
``adaptation.csv`` (step-size adaptation checks), ``checkpoint.pt`` (for resuming), ``model.pt`` (the trained
``state_dict``) and ``metrics.json`` (:class:`Metrics`). Every write is atomic (temp file + rename); every read
is cached, so a report reads each file and loads each model once.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import io
import json
import os
import socket
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, TypedDict

import torch

from .io import atomic_write, read_csv, write_csv, write_json


class RunDirError(ValueError):
    """A run folder's file is missing, corrupt or does not belong to this run."""


class EvaluationRecord(TypedDict, total=False):
    """One evaluation of the trained model (``metrics.json["evaluations"][i]``)."""

    test_solver: str
    test_steps: int | None
    test_step_size: float | None
    rtol: float | None
    atol: float | None
    accuracy: float | None
    loss: float | None
    nfe: float | None
    status: str  # ok | failed
    reason: str | None
    is_train_solver: bool


class TrainRecord(TypedDict, total=False):
    """How the model was trained (``metrics.json["train"]``)."""

    solver: str
    steps: int | None
    step_size: float | None
    block: str
    rtol: float | None
    iterations: int
    parameters: int
    parameter_breakdown: dict[str, int]
    final_loss: float | None
    final_accuracy: float | None
    train_loss: float
    train_accuracy: float | None
    step_sizes: list[float]
    adaptation: dict[str, Any]


class Metrics(TypedDict, total=False):
    """``metrics.json``: the run's status and every number it reports."""

    status: str  # running | ok | failed
    reason: str | None
    seed: int
    overrides: dict[str, str]
    task: str
    threads: int
    fingerprint: str
    smoke: bool  # a +debug=smoke run: its numbers mean nothing
    baseline_accuracy: float | None  # always predicting the majority training class, on the test set
    train: TrainRecord
    evaluations: list[EvaluationRecord]
    validation: dict[str, float | None]  # the training solver on the held-out part of the training set
    analysis: dict[str, Any]


class RunDir:
    """One run's folder. Reads are cached; writes are atomic."""

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    HISTORY = "history.csv"
    ADAPTATION = "adaptation.csv"
    CHECKPOINT = "checkpoint.pt"
    MODEL = "model.pt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._models: dict[str, Any] = {}

    def holds_run(self) -> bool:
        """Whether a run has written here (its config, metrics or checkpoint), finished or not."""
        return any(self.file(name).exists() for name in (self.CONFIG, self.METRICS, self.CHECKPOINT))

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # --- reading ------------------------------------------------------------------------------------

    @cached_property
    def metrics(self) -> Metrics | None:
        """``metrics.json`` as a dict (None when missing or unreadable)."""
        try:
            data = json.loads(self.file(self.METRICS).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None  # type: ignore[return-value]

    @cached_property
    def config(self) -> Any:
        """The run's config, merged onto the schema (a ``RunDirError`` when missing or unreadable)."""
        from omegaconf import OmegaConf

        path = self.file(self.CONFIG)
        try:
            return OmegaConf.merge(_schema(), OmegaConf.load(path))
        except FileNotFoundError:
            raise RunDirError(f"{path}: no such file (not a finished run folder)") from None
        except Exception as err:
            raise RunDirError(f"{path}: unreadable config ({type(err).__name__}: {err}); delete the run folder "
                              "and train again") from None

    @cached_property
    def history(self) -> list[dict[str, str]]:
        """``history.csv`` rows as strings (``[]`` when missing)."""
        return read_csv(self.file(self.HISTORY))

    @cached_property
    def adaptation(self) -> list[dict[str, str]]:
        """``adaptation.csv`` rows as strings (``[]`` when missing)."""
        return read_csv(self.file(self.ADAPTATION))

    def load_model(self, device: str = "cpu") -> Any:
        """The trained model: the config's architecture with ``model.pt`` loaded (``weights_only=True``); cached."""
        if device not in self._models:
            from .build import build_model_for, grown_block

            cfg = self.config
            model = build_model_for(cfg)
            model.block = grown_block(cfg, model.block)  # grown during training (growth.mode): the grown architecture
            model.load_state_dict(self._load_torch(self.file(self.MODEL), device))
            metrics = self.metrics or {}
            step_size = (metrics.get("train") or {}).get("step_size")
            if cfg.adaptation.enabled and step_size:  # trained with an adapted step: use the final one
                model.block = model.block.with_solver(cfg.solver.name, step_size=float(step_size))
            self._models[device] = model.to(device)
        return self._models[device]

    def load_checkpoint(self, device: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The training checkpoint (None when there is none)."""
        path = self.file(self.CHECKPOINT)
        return self._load_torch(path, device) if path.exists() else None

    @staticmethod
    def _load_torch(path: Path, device: torch.device | str) -> Any:
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError:
            raise RunDirError(f"{path}: no such file (the run did not finish training)") from None
        except Exception as err:
            raise RunDirError(f"{path}: corrupt or not a torch file ({type(err).__name__}); delete it and train "
                              "again") from None

    # --- one run per folder --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's write lock (``.lock``, released when the process ends, SIGKILL included).

        A second writer gets a ``RunDirError`` naming the holder.
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        path = self.file(".lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirError(f"{self.path} is being written by {holder}: wait for that run to end, or give "
                                  "this run another output folder (hydra.run.dir=...)") from None
            try:  # the file may have been unlinked by a holder that just finished: lock the current one
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        when = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {when}".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)

    def check_resume(self, fingerprint: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start afresh), refusing one made by another config.

        ``config``: the new run's resolved config (a plain dict), to name the keys that differ.
        """
        ckpt_path = self.file(self.CHECKPOINT)
        if not ckpt_path.exists():
            return None
        ckpt = self.load_checkpoint()
        assert ckpt is not None
        if ckpt.get("fingerprint") == fingerprint:
            return ckpt
        from omegaconf import OmegaConf

        try:
            old = OmegaConf.to_container(self.config, resolve=True)
        except RunDirError:
            old = {}
        diff = differing_keys(defining(old), defining(config)) if old else ["(no readable config.yaml)"]
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise RunDirError(f"{self.path} holds a run of another config (differs in {shown or 'unknown keys'}): "
                          "give this run another output folder (hydra.run.dir=... / hydra.sweep.dir=...), or delete "
                          f"{ckpt_path.name} there to start over")

    # --- writing ------------------------------------------------------------------------------------

    def write_config(self, yaml_text: str) -> None:
        path = self.file(self.CONFIG)
        if path.is_file() and path.read_text() == yaml_text:
            return  # a resumed run: the file stays exactly as it was
        atomic_write(self.file(self.CONFIG), lambda f: f.write(yaml_text))
        self.__dict__.pop("config", None)

    def write_metrics(self, metrics: Metrics) -> None:
        write_json(self.file(self.METRICS), metrics)
        self.__dict__["metrics"] = metrics

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.file(self.HISTORY), rows)
        self.__dict__.pop("history", None)

    def write_adaptation(self, rows: list[dict[str, Any]]) -> None:
        write_csv(self.file(self.ADAPTATION), rows)
        self.__dict__.pop("adaptation", None)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_torch(self.file(self.CHECKPOINT), state)

    def save_model(self, state_dict: dict[str, Any]) -> None:
        save_torch(self.file(self.MODEL), state_dict)
        self._models.clear()


#: Config sections and keys that do not change the trained model: a run resumes across changes to them (and
#: across the training length when the learning rate is constant: resuming then extends the run).
NOT_DEFINING = ("device", "threads", "evaluation", "analysis", "data.root", "trainer.progress",
                "trainer.log_every", "trainer.checkpoint_every", "trainer.eval_batch_size", "trainer.compile")


def defining(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened ``key: value`` pairs of a resolved config that define the trained model."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(config, "")
    constant_lr = flat.get("optimizer.schedule", "none") == "none"
    if constant_lr and flat.get("growth.mode", "none") == "none":  # a longer run continues a shorter one (growth
        # happens at a fraction of the iterations: there the budget defines the model)
        flat.pop("trainer.iterations", None)
        flat.pop("trainer.epochs", None)
    return {k: v for k, v in flat.items()
            if not any(k == n or k.startswith(n + ".") for n in NOT_DEFINING) and not k.startswith("hydra.")}


def fingerprint(config: dict[str, Any]) -> str:
    """A hash of the config's defining keys (see :data:`NOT_DEFINING`)."""
    text = json.dumps(defining(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or exists on one side only)."""
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]


@functools.cache
def _schema() -> Any:
    """The config schema as an OmegaConf node, built once per process (building it costs ~0.1 s)."""
    from omegaconf import OmegaConf

    from .config import Config

    return OmegaConf.structured(Config)


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)
