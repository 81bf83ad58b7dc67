"""The config section ``growth``: grow the block once during training (:mod:`odenet.growth`) and record the jump.

At iteration ``round(growth.at x total)`` (before that iteration's batch) :class:`Growth` measures the loss and
accuracy on the whole training set, grows the block (sharing its parameters, so the optimiser's state for them is
kept; new parameters join the optimiser as a new group), and measures again. A resumed run past that iteration
re-grows the structure before its checkpoint is loaded (the record travels in the checkpoint), and
:func:`~odenet.runner.build.grown_block` gives a finished run's architecture to ``RunDir.load_model``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..growth import refinement_errors
from ..models import Classifier, count_parameters
from .build import grown_block
from .config import Config
from .evaluate import evaluate

log = logging.getLogger(__name__)

#: growth.mode values; the second tuple changes the block
GROWTH_MODES = ("none", "control", "identity", "default", "refine")
GROWING = ("identity", "default", "refine")


def growth_iteration(at: float, total: int) -> int:
    """The iteration (training iterations done) at which the block grows: ``round(at total)`` in ``1..total-1``."""
    return max(1, min(total - 1, round(at * total)))


class Growth:
    """Grows the trainer's model at iteration :attr:`at`; :attr:`record` is what ``metrics.json`` gets."""

    def __init__(self, cfg: Config, total: int, x: torch.Tensor, y: torch.Tensor, x_analysis: torch.Tensor,
                 task: str) -> None:
        self.cfg, self.total, self.x, self.y, self.x_analysis, self.task = cfg, total, x, y, x_analysis, task
        self.at = growth_iteration(cfg.growth.at, total)
        self.record: dict[str, Any] | None = None

    def _grow(self, trainer: Any) -> None:
        model: Classifier = trainer.model
        old = {id(p) for p in model.parameters()}
        model.block = grown_block(self.cfg, model.block)
        new = [p for p in model.parameters() if id(p) not in old and p.requires_grad]
        if new:
            trainer.optimizer.add_param_group({"params": new})

    def _evaluate(self, model: Classifier) -> dict[str, Any]:
        return evaluate(model, self.x, self.y, self.cfg.trainer.eval_batch_size, self.task)

    def before_iteration(self, it: int, trainer: Any) -> None:
        """Grow (and measure) when ``it`` training iterations are done, once."""
        if it != self.at or self.record is not None:
            return
        model: Classifier = trainer.model
        old_block = model.block
        before = self._evaluate(model)
        with torch.no_grad():
            was = model.training
            model.eval()
            z = model.stem(self.x_analysis)
            out_before = old_block(z)
            self._grow(trainer)
            out_after = model.block(z)
            model.train(was)
        after = self._evaluate(model)
        block = model.block
        record: dict[str, Any] = {
            "mode": self.cfg.growth.mode, "at": it, "steps_before": getattr(old_block, "steps", None),
            "steps_after": getattr(block, "steps", None), "T_before": old_block.T, "T_after": block.T,
            "parameters_after": count_parameters(model),
            "loss_before": before["loss"], "loss_after": after["loss"],
            "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            # mean row norm of the change of the block's output on the analysis points, and of the output itself
            "block_change": float((out_after - out_before).norm(dim=-1).mean()),
            "block_scale": float(out_before.norm(dim=-1).mean()),
        }
        if self.cfg.growth.mode == "refine":
            with torch.no_grad():
                record["refinement"] = refinement_errors(old_block, block, z)
        self.record = record
        log.info("growth (%s) at iteration %d: %d -> %d steps, training loss %.6g -> %.6g", record["mode"], it,
                 record["steps_before"], record["steps_after"], record["loss_before"], record["loss_after"])

    def state_dict(self) -> dict[str, Any]:
        return {"record": self.record}

    def load_state_dict(self, state: dict[str, Any] | None, trainer: Any) -> None:
        """Re-grow the structure of a checkpoint taken after the growth (before its weights are loaded)."""
        record = (state or {}).get("record")
        if record is not None:
            self._grow(trainer)
            self.record = record
