"""Views of a report's finished run folders, shared by the experiment sections.

:class:`Run` wraps one :class:`~odenet.runner.rundir.RunDir` of a :class:`~odenet.reports.collect.ReportContext`
(so its ``metrics.json``, ``config.yaml`` and ``history.csv`` are read once per report, and its model loaded
once) with what the sections ask of it: the training record, an analysis result, the evaluation under the
training solver, labels and the test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..integrator import Integrator, fmt_h
from ..runner.rundir import RunDir, RunDirError
from .collect import ReportContext, run_beats_baseline

BLOCK_COLORS = {"plain": "tab:red", "residual": "tab:blue", "ode": "tab:green", "learned_steps": "tab:purple"}


class Run:
    """One ok run of a report: its folder (``run_dir`` as in the rows) and what is recorded there."""

    def __init__(self, run_dir: str, folder: RunDir) -> None:
        self.run_dir = run_dir
        self.folder = folder

    def __repr__(self) -> str:
        return f"Run({self.run_dir!r})"

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.folder.metrics or {})

    @property
    def cfg(self) -> DictConfig:
        """The run's config on the schema (raises ``RunDirError`` when missing or unreadable)."""
        return self.folder.config

    @property
    def history(self) -> list[dict[str, str]]:
        return self.folder.history

    @property
    def train(self) -> dict[str, Any]:
        """``metrics.json["train"]``: how the model was trained."""
        return (self.folder.metrics or {}).get("train") or {}

    @property
    def seed(self) -> Any:
        return (self.folder.metrics or {}).get("seed")

    @property
    def baseline(self) -> float | None:
        """The majority-class baseline accuracy (None: regression, or not recorded)."""
        value = (self.folder.metrics or {}).get("baseline_accuracy")
        return None if value is None else float(value)

    @property
    def at_chance(self) -> bool:
        """The model did not beat its majority-class baseline under its training solver."""
        return run_beats_baseline(self.folder.metrics) is False

    @property
    def smoke(self) -> bool:
        """A ``+debug=smoke`` run: its numbers check the machinery and mean nothing."""
        return bool((self.folder.metrics or {}).get("smoke"))

    @cached_property
    def integrator(self) -> Integrator | None:
        """The training integrator."""
        t = self.train
        return Integrator.from_record(t.get("solver"), t.get("steps"), t.get("step_size"), t.get("rtol"))

    @property
    def adaptive(self) -> bool:
        """Trained through an error-controlled solver."""
        return self.integrator is not None and self.integrator.adaptive

    def analysis(self, name: str) -> dict[str, Any] | None:
        """``metrics.json["analysis"][name]``, or None when absent or recorded as an error."""
        a = ((self.folder.metrics or {}).get("analysis") or {}).get(name)
        return a if isinstance(a, dict) and "error" not in a else None

    def evaluations(self) -> list[dict[str, Any]]:
        return list((self.folder.metrics or {}).get("evaluations") or [])

    def train_eval(self) -> dict[str, Any]:
        """The evaluation under the training solver (``{}`` when there is none)."""
        evs = [e for e in self.evaluations() if e.get("is_train_solver")]
        return evs[0] if evs else {}

    @property
    def train_label(self) -> str:
        """``residual N=8``, ``ode dopri5 rtol=0.001``: the block and its training integrator."""
        t = self.train
        block = t.get("block") or "?"
        if t.get("steps"):
            return f"{block} N={t['steps']}"
        if t.get("rtol") is not None:
            return f"{block} {t.get('solver')} rtol={t['rtol']:g}"
        return f"{block} {t.get('solver')}"

    @property
    def label(self) -> str:
        """:func:`model_label` of the config."""
        return model_label(self.cfg)

    @property
    def data(self) -> str:
        """The data set (``concentric_spheres (dim 2)``)."""
        d = self.cfg.data
        return f"{d.name} (dim {d.dim})" if d.name == "concentric_spheres" else str(d.name)

    @property
    def penalised(self) -> bool:
        r = self.cfg.regularization
        return bool(r.kinetic > 0 or r.jacobian > 0)

    def model(self) -> torch.nn.Module:
        """The trained model in eval mode (loaded once per report)."""
        return self.folder.load_model().eval()


def ok_runs(ctx: ReportContext) -> list[Run]:
    """The runs of ``ctx`` whose ``metrics.json`` says ok, in row order."""
    return [Run(d, f) for d, f in ctx.run_dirs() if (f.metrics or {}).get("status") == "ok"]


def configured_runs(ctx: ReportContext) -> list[Run]:
    """:func:`ok_runs` with a readable config, sorted by data set, model and seed."""
    runs = []
    for run in ok_runs(ctx):
        try:
            run.cfg  # noqa: B018 - read (and cache) it now: a run without one is left out
        except RunDirError:
            continue
        runs.append(run)
    runs.sort(key=lambda r: (r.data, _model_order(r.cfg), r.label, r.seed or 0))
    return runs


def model_label(cfg: DictConfig) -> str:
    """``NODE (dopri5)``, ``ANODE +1 (dopri5, adjoint)``, ``ResNet N=32 (h=1/32)``, ``ResNet (dopri5, adaptive)``,
    plus the penalty weights."""
    kind, s, aug = cfg.block.kind, cfg.solver, int(cfg.model.augment_dim)
    if kind == "ode":
        name = f"ANODE +{aug}" if aug else "NODE"
        how = s.name if Integrator(s.name).adaptive else f"{s.name} N={s.steps}"
        label = f"{name} ({how}{', adjoint' if s.adjoint else ''})"
    else:
        name = {"residual": "ResNet", "plain": "plain net", "learned_steps": "ResNet, learned h"}.get(kind, kind)
        if Integrator(s.name).adaptive:  # trained through an error-controlled solver: no N, no h
            label = f"{name} ({s.name}, adaptive)" + (f" +{aug}" if aug else "")
        else:
            h = fmt_h(cfg.block.T / s.steps) if s.steps else "?"
            scheme = "" if s.name == "euler" else f"{s.name}, "
            label = f"{name} N={s.steps} ({scheme}h={h})" + (f" +{aug}" if aug else "")
    r = cfg.regularization
    weights = [f"{name} {w:g}" for name, w in (("kinetic", r.kinetic), ("jacobian", r.jacobian)) if w > 0]
    return label + (f", {', '.join(weights)}" if weights else "")


def _model_order(cfg: DictConfig) -> tuple[int, float]:
    kind = cfg.block.kind
    if kind == "ode":
        return (0, cfg.model.augment_dim + 10 * (cfg.regularization.kinetic + cfg.regularization.jacobian))
    return (1, -(cfg.solver.steps or 0))


def by_data_and_label(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
    """data set -> :attr:`Run.label` -> runs."""
    out: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        out.setdefault(run.data, {}).setdefault(run.label, []).append(run)
    return out


def _train_order(run: Run) -> tuple[Any, ...]:
    t = run.train
    order = {"plain": 0, "residual": 1, "learned_steps": 2, "ode": 3}
    return (order.get(t.get("block"), 9), t.get("steps") or 10**9, t.get("solver") or "")


def by_train_label(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """:attr:`Run.train_label` -> runs, plain before residual before ODE blocks, fewer steps first."""
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=_train_order):
        groups.setdefault(run.train_label, []).append(run)
    return groups


def run_dataset(ctx: ReportContext, run: Run) -> Any:
    """The data set a run was trained and tested on (the runner's :func:`~odenet.runner.train.load_data` of its
    config), loaded once per report for all runs with the same data config."""
    from ..runner.train import load_data

    cfg = run.cfg
    return ctx.cached(("data", OmegaConf.to_yaml(cfg.data)), lambda: load_data(cfg))
