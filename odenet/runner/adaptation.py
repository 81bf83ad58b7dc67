"""Step-size adaptation during training (Ott et al., ICLR 2021, "ResNet After All?").

Every ``k`` iterations the accuracy on the current training batch under the training solver
(Euler at step ``h``) is compared with that under a more accurate test solver (midpoint). A gap
above ``threshold`` means the model exploits the discretisation (it is no longer a flow of an ODE),
so ``h`` is halved; otherwise the larger step ``1.1 h`` is tried on the same batch and kept only if
the training solver's accuracy there stays within ``threshold`` of the test solver's.

Accuracies are fractions of the batch (0..1): ``threshold=0.1`` is 10 percentage points, as in the
authors' code (``calculate_accuracy`` returns correct / batch size, default ``threshold: 0.1``).

Two parts:

- :class:`StepSizeRule` — the decision alone, from gaps: pure, testable with scripted numbers.
- :class:`StepSizeAdaptation` — the training-loop side: keeps ``h``, measures accuracies on the batch,
  swaps the model's block for a torchdiffeq fixed-grid ``ODEBlock`` at the new ``h`` (on the *same*
  field, so the optimiser is unaffected), and records every check and the NFE spent.

Because ``h`` takes values like ``1.1^j / 2^i`` that are not ``T / N``, the block is torchdiffeq's
fixed grid (``with_solver("euler", step_size=h)``): ``ceil(T / h)`` steps, all of size ``h`` but the
last, which ends at ``T``. This is what the authors' code integrates too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..blocks import Block, ODEBlock
from ..solvers import SCHEMES, TORCHDIFFEQ_FIXED
from .config import AdaptationConfig, Config

__all__ = [
    "Decision", "StepSizeRule", "StepSizeAdaptation", "grid_steps", "hairer_initial_step", "snap_step_size",
    "solver_order",
]

ACTIONS = ("halve", "grow", "reject_growth", "at_min", "at_max")


@dataclass(frozen=True)
class Decision:
    """What :meth:`StepSizeRule.decide` did with step ``step_size``.

    ``action``: ``halve`` (gap above threshold), ``grow`` (the larger step passed), ``reject_growth``
    (the larger step failed: ``h`` kept), ``at_min`` (gap above threshold but ``h`` is already the
    smallest allowed) or ``at_max`` (gap fine, ``h`` already the largest allowed: nothing tried).
    """

    step_size: float
    gap: float
    action: str
    new_step_size: float
    tried_step_size: float | None = None
    tried_gap: float | None = None


class StepSizeRule:
    """Ott et al.'s rule: halve ``h`` if ``gap(h) > threshold``, else grow to ``increase * h`` if ``gap`` there stays
    ``<= threshold``. Steps are kept within ``[min_step_size, max_step_size]``.
    """

    def __init__(
        self,
        threshold: float = 0.1,
        decrease: float = 0.5,
        increase: float = 1.1,
        min_step_size: float = 0.0,
        max_step_size: float = math.inf,
    ) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"adaptation.threshold is an accuracy gap in [0, 1] (a fraction), got {threshold}")
        if not 0 < decrease < 1:
            raise ValueError(f"adaptation.decrease must be in (0, 1), got {decrease}")
        if not increase > 1:
            raise ValueError(f"adaptation.increase must be > 1, got {increase}")
        if not 0 <= min_step_size < max_step_size:
            raise ValueError(
                f"adaptation step limits need 0 <= min_step_size < max_step_size, got {min_step_size}, {max_step_size}"
            )
        self.threshold, self.decrease, self.increase = float(threshold), float(decrease), float(increase)
        self.min_step_size, self.max_step_size = float(min_step_size), float(max_step_size)

    def decide(self, step_size: float, gap: float, gap_at: Callable[[float], float]) -> Decision:
        """The decision at ``step_size`` given its ``gap``; ``gap_at(h)`` is called only to try a larger step."""
        h = step_size
        if gap > self.threshold:
            new = max(self.decrease * h, self.min_step_size)
            return Decision(h, gap, "halve" if new < h else "at_min", min(new, h))
        tried = min(self.increase * h, self.max_step_size)
        if tried <= h:
            return Decision(h, gap, "at_max", h)
        tried_gap = gap_at(tried)
        if tried_gap > self.threshold:
            return Decision(h, gap, "reject_growth", h, tried, tried_gap)
        return Decision(h, gap, "grow", tried, tried, tried_gap)


def grid_steps(step_size: float, T: float) -> int:
    """Steps of torchdiffeq's fixed grid with ``step_size`` on ``[0, T]`` (the last one shorter)."""
    return max(1, math.ceil(T / step_size - 1e-9))


def snap_step_size(step_size: float, T: float, rel: float = 1e-6) -> float:
    """``T / N`` when ``T / step_size`` is within ``rel`` of an integer ``N``, else ``step_size``.

    torchdiffeq builds its grid in float32 from ``ceil(T / h + 1)`` points; a ``T / h`` a hair above an
    integer would add a last step of nearly zero length (one wasted evaluation).
    """
    n = T / step_size
    if abs(n - round(n)) <= rel * n and round(n) >= 1:
        return T / round(n)
    return step_size


INITIAL_RULES = ("fixed", "hairer")


def solver_order(name: str) -> int:
    """The order of the fixed-step scheme ``name`` (from odenet's Butcher tableau), for :func:`hairer_initial_step`."""
    if name not in SCHEMES:
        raise ValueError(f"adaptation.initial=hairer needs the training solver's order: solver.name must be one of "
                         f"{sorted(SCHEMES)}, got {name!r}")
    return SCHEMES[name].order


@torch.no_grad()
def hairer_initial_step(field: Callable[[Tensor, Tensor], Tensor], x: Tensor, order: int) -> float:
    """Hairer, Nørsett & Wanner (1993, p. 169)'s starting step, with batch-mean norms (Ott et al.'s
    ``find_initial_step_size``): ``d0 = mean |x|``, ``d1 = mean |F(0, x)|``, ``h0 = 0.01 d0 / d1`` (``1e-6`` if
    either is below ``1e-5``), ``d2 = mean |F(h0, x + h0 F(0, x)) - F(0, x)| / h0``,
    ``h1 = (0.01 / max(d1, d2))^(1 / (order + 1))`` (``max(1e-6, 1e-3 h0)`` if that max is below ``1e-15``); returns
    ``min(100 h0, h1)``.

    ``|.|`` is the Euclidean norm of each example over all its non-batch dimensions (the first axis is the batch),
    *unscaled*: not Hairer et al.'s ``atol + rtol |x0|`` weighted norm, which a fixed-step solver has no tolerances
    for."""
    t0 = torch.zeros((), dtype=x.dtype, device=x.device)

    def norm(v: Tensor) -> float:
        return float(v.flatten(1).norm(dim=1).mean())

    f0 = field(t0, x)
    d0, d1 = norm(x), norm(f0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = norm(field(t0 + h0, x + h0 * f0) - f0) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) < 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


class StepSizeAdaptation:
    """Adapts the training step of a :class:`~odenet.models.Classifier` during training (see the module doc).

    Use: ``attach(model)`` once (the block becomes a fixed-grid ``ODEBlock`` at the current ``h``), then
    ``on_iteration(...)`` after every backward pass and before ``optimizer.step()``, so that the check sees
    the weights that produced the batch's training logits (as in the authors' code).
    """

    def __init__(
        self,
        rule: StepSizeRule,
        initial_step_size: float,
        T: float = 1.0,
        solver: str = "euler",
        test_solver: str = "midpoint",
        every: int = 50,
        accuracy_factor: float | None = None,
    ) -> None:
        if solver not in TORCHDIFFEQ_FIXED or test_solver not in TORCHDIFFEQ_FIXED:
            raise ValueError(
                f"solver and test_solver must be torchdiffeq fixed-grid methods {sorted(TORCHDIFFEQ_FIXED)}"
            )
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.rule, self.T, self.solver, self.test_solver = rule, float(T), solver, test_solver
        self.every, self.accuracy_factor = int(every), accuracy_factor
        h0 = min(max(float(initial_step_size), rule.min_step_size), rule.max_step_size)
        self.initial_step_size = self.step_size = snap_step_size(h0, self.T)
        self.decisions: list[dict[str, Any]] = []  # one row per check (adaptation.csv)
        self.nfe_sum = 0  # training forward NFE over all iterations
        self.iterations = 0
        self.check_nfe = 0  # forward NFE spent on the checks themselves
        self._window_nfe, self._window_count = 0, 0

    @classmethod
    def from_config(cls, cfg: Config) -> StepSizeAdaptation:
        a: AdaptationConfig = cfg.adaptation
        T = float(cfg.block.T)
        rule = StepSizeRule(
            threshold=a.threshold, decrease=a.decrease, increase=a.increase,
            min_step_size=a.min_step_size if a.min_step_size is not None else T / 500,
            max_step_size=a.max_step_size if a.max_step_size is not None else T,
        )
        h0 = a.initial_step_size if a.initial_step_size is not None else T / int(cfg.solver.steps or 1)
        return cls(rule, h0, T, cfg.solver.name, a.test_solver, a.every, a.accuracy_factor)

    def initialize(self, model: Any, x: Tensor, rule: str = "fixed") -> None:
        """Before training: with ``rule="hairer"``, the initial ``h`` is :func:`hairer_initial_step` of ``model``'s
        field at its stem's output for the batch ``x`` (Ott et al. use their first training batch), within the
        rule's step limits; ``"fixed"`` keeps the configured one."""
        if rule not in INITIAL_RULES:
            raise ValueError(f"adaptation.initial must be one of {list(INITIAL_RULES)}, got {rule!r}")
        if rule == "hairer":
            h = hairer_initial_step(model.block.field, model.stem(x), solver_order(self.solver))
            h = min(max(h, self.rule.min_step_size), self.rule.max_step_size)
            self.initial_step_size = self.step_size = snap_step_size(h, self.T)

    # --- the block ----------------------------------------------------------------------------------

    def make_block(self, block: Block, step_size: float, solver: str | None = None) -> Block:
        """A fixed-grid ODE block with ``step_size`` on ``block``'s field (shared parameters)."""
        out = block.with_solver(solver or self.solver, step_size=step_size, adjoint=False)
        assert isinstance(out, ODEBlock) and out.field is block.field
        return out

    def attach(self, model: Any) -> None:
        """Integrate ``model``'s field with the training solver at the current step size."""
        model.block = self.make_block(model.block, self.step_size)

    def test_step_size(self, step_size: float) -> float:
        """The test solver's step: the same ``h``, or with ``accuracy_factor`` f, ``sqrt(h / f)`` when that is smaller.

        The second is the rule of the authors' code for euler -> midpoint: midpoint's error at ``sqrt(h / f)``
        is ~``h / f``, ``f`` times below Euler's ~``h``.
        """
        if self.accuracy_factor is None:
            return step_size
        return min(step_size, math.sqrt(step_size / self.accuracy_factor))

    @torch.no_grad()
    def _accuracy(self, model: Any, solver: str, step_size: float, x: Tensor, y: Tensor) -> tuple[float, int]:
        block = self.make_block(model.block, step_size, solver)
        logits = model.head(block(model.stem(x)))
        return float((logits.argmax(-1) == y).float().mean()), block.nfe

    # --- the training loop --------------------------------------------------------------------------

    def on_iteration(
        self, iteration: int, model: Any, x: Tensor, y: Tensor, logits: Tensor, nfe: int
    ) -> Decision | None:
        """Record iteration ``iteration`` (1-based; ``nfe`` its training forward NFE) and every ``every``-th one
        run the check on its batch ``(x, y)``; ``logits`` are the training forward's. Returns the decision, if any.
        """
        self.iterations += 1
        self.nfe_sum += int(nfe)
        self._window_nfe += int(nfe)
        self._window_count += 1
        if iteration % self.every != 0:
            return None
        h = self.step_size
        train_acc = float((logits.detach().argmax(-1) == y).float().mean())
        h_test = self.test_step_size(h)
        test_acc, test_nfe = self._accuracy(model, self.test_solver, h_test, x, y)
        self.check_nfe += test_nfe
        tried_acc: list[float] = []

        def gap_at(step: float) -> float:
            acc, used = self._accuracy(model, self.solver, snap_step_size(step, self.T), x, y)
            self.check_nfe += used
            tried_acc.append(acc)
            return abs(acc - test_acc)  # against the test solver's accuracy at h, as the authors' code does

        decision = self.rule.decide(h, abs(train_acc - test_acc), gap_at)
        new = snap_step_size(decision.new_step_size, self.T)
        if new != h:
            self.step_size = new
            self.attach(model)
        self.decisions.append({
            "iteration": iteration,
            "step_size": h,
            "steps": grid_steps(h, self.T),
            "test_solver": self.test_solver,
            "test_step_size": h_test,
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "gap": decision.gap,
            "action": decision.action,
            "tried_step_size": decision.tried_step_size,
            "tried_accuracy": tried_acc[0] if tried_acc else None,
            "tried_gap": decision.tried_gap,
            "new_step_size": new,
            "new_steps": grid_steps(new, self.T),
        })
        return decision

    def history_columns(self) -> dict[str, Any]:
        """Columns for the current ``history.csv`` row (resets the NFE window): the step size now in use, the
        mean training forward NFE since the last row, and the last check's gap and action."""
        last = self.decisions[-1] if self.decisions else {}
        row = {
            "step_size": self.step_size,
            "nfe_forward_mean": self._window_nfe / self._window_count if self._window_count else None,
            "adapt_gap": last.get("gap"),
            "adapt_action": last.get("action"),
        }
        self._window_nfe, self._window_count = 0, 0
        return row

    def summary(self) -> dict[str, Any]:
        """For ``metrics.json``: settings, first and last ``h``, mean training NFE and the count of each action."""
        counts = {a: sum(1 for d in self.decisions if d["action"] == a) for a in ACTIONS}
        return {
            "solver": self.solver,
            "test_solver": self.test_solver,
            "accuracy_factor": self.accuracy_factor,
            "every": self.every,
            "threshold": self.rule.threshold,
            "initial_step_size": self.initial_step_size,
            "final_step_size": self.step_size,
            "final_steps": grid_steps(self.step_size, self.T),
            "min_step_size_used": min([self.initial_step_size, *(d["new_step_size"] for d in self.decisions)]),
            "iterations": self.iterations,
            "nfe_forward_total": self.nfe_sum,
            "nfe_forward_mean": self.nfe_sum / self.iterations if self.iterations else None,
            "check_nfe": self.check_nfe,
            "checks": len(self.decisions),
            **{f"{a}_count": n for a, n in counts.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_size": self.step_size, "initial_step_size": self.initial_step_size, "decisions": list(self.decisions),
            "nfe_sum": self.nfe_sum, "iterations": self.iterations, "check_nfe": self.check_nfe,
            "window": [self._window_nfe, self._window_count]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_size, self.initial_step_size = float(state["step_size"]), float(state["initial_step_size"])
        self.decisions = list(state["decisions"])
        self.nfe_sum, self.iterations = int(state["nfe_sum"]), int(state["iterations"])
        self.check_nfe = int(state["check_nfe"])
        self._window_nfe, self._window_count = (int(v) for v in state["window"])
