"""``trainer.ensemble=K``: K seeds of one config trained in one process as one batched ensemble.

Member ``i`` is the run of this config with ``seed = cfg.seed + i``: it is seeded, built, measured at init and
(when resuming) restored exactly as that separate run (:func:`odenet.runner.train.prepare`), so its initial
parameters are that run's bit for bit. Training stacks the members' parameters
(``torch.func.stack_module_state`` layout: one leading member dimension) and runs one forward of all members with
``torch.func.vmap`` over ``torch.func.functional_call``. Each member draws its batches from its own
``BatchSampler`` (seeded with its seed), so it sees the batches its separate run sees; the loss is the sum of
the member losses, so each member's gradient is its own; Adam / SGD (weight decay, momentum and the schedules
included) update elementwise, so one optimiser on the stacked parameters is K separate optimisers. The members
follow their separate runs to float tolerance (batched kernels round differently), not bit for bit. With
``trainer.compile=true`` the batched forward and loss run as one compiled graph (the vmap fallback stays eager).

Every member is written to the run folder its separate run would use (:func:`member_runs`), with that run's
``config.yaml`` (its seed, ``trainer.ensemble: 1``), ``history.csv``, checkpoints, ``model.pt`` and
``metrics.json``; evaluation and measurements run on each unstacked member through the ordinary path
(:func:`odenet.runner.train.finish`). Resuming works when every member's checkpoint is at the same iteration
(as an interrupted ensemble leaves them) and is refused otherwise. A member whose loss stops being finite fails
as its separate run would (its ``metrics.json`` says so) while the others train on; so does one whose state
stops being finite before its block (found by running that member's own forward, which raises what its separate
run raises).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, vmap

from ..adaptive import AdaptiveSolveError, odeint_members
from ..blocks import NonFiniteStateError, ODEBlock, SolverError
from ..fields import Augment, DepthIndexedField, MLPField
from ..models import Classifier
from ..stack import ResidualStack
from .accel import apply_threads, compiled_training_loss, load_optimizer_state, resolve_device, seed_everything
from .build import build_model
from .config import Config, job_dir_name
from .evaluate import NonFiniteOutput
from .loop import TrainingDiverged, diverged, loss_function
from .rundir import Metrics, RunDir, RunDirError, fingerprint
from .train import Job, finish, load_data, prepare
from .validate import validate

__all__ = ["BatchedLinear", "Ensemble", "SweepNaming", "batched_model", "member_config", "member_runs",
           "prepared_members", "train_ensemble"]

log = logging.getLogger(__name__)

KEY = "trainer.ensemble"


@dataclass
class SweepNaming:
    """How a Hydra sweep names its job folders (``hydra.sweep.dir`` / ``odenet_job_dir:override_dirname``)."""

    sweep_dir: Path
    exclude_keys: Sequence[str] = ()
    item_sep: str = ","
    kv_sep: str = "="

    def folder(self, overrides: Sequence[str]) -> Path:
        """The job folder of a job with these task overrides (as Hydra's ``override_dirname``, then ours)."""
        lines = sorted(o for o in overrides if _key(o) not in self.exclude_keys)
        return self.sweep_dir / job_dir_name(self.item_sep.join(lines).replace("=", self.kv_sep))


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def member_runs(cfg: Config, out_dir: Path, task: Sequence[str], naming: SweepNaming | None = None
                ) -> list[tuple[Path, dict[str, str]]]:
    """``(run folder, overrides)`` of each member: those of the separate run of its seed.

    Member 0 is this job itself (its folder and overrides, less ``trainer.ensemble``). Member ``i`` has the
    override ``seed=cfg.seed+i``; in a sweep whose job folders are named by their overrides (``naming``, with
    ``out_dir`` the folder so named) its folder is the one the sweep gives that job, else ``OUT_DIR_seed=S``
    beside ``out_dir``.
    """
    base = [o for o in task if _key(o) != KEY]
    named = naming is not None and naming.folder(base).resolve() == Path(out_dir).resolve()
    out = [(Path(out_dir), {_key(o): o.partition("=")[2] for o in base})]
    for i in range(1, cfg.trainer.ensemble):
        seed = cfg.seed + i
        lines = [o for o in base if _key(o) != "seed"]
        given = [o.partition("=")[0] for o in base if _key(o) == "seed"]  # keeps a "+seed" as written
        lines.append(f"{given[0] if given else 'seed'}={seed}")
        path = naming.folder(lines) if named and naming is not None else Path(f"{out_dir}_seed={seed}")
        out.append((path, {_key(o): o.partition("=")[2] for o in lines}))
    return out


def member_config(cfg: Config, seed: int) -> Config:
    """The config of the separate run of ``seed``: this one with ``seed`` and ``trainer.ensemble=1``."""
    out = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    OmegaConf.set_readonly(out, False)
    out.seed, out.trainer.ensemble = seed, 1
    return out  # type: ignore[return-value]


def _rng() -> tuple[Any, ...]:
    """The global random states a run draws from (Python, NumPy, torch CPU and CUDA)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng(state: tuple[Any, ...]) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    if state[3]:
        torch.cuda.set_rng_state_all(state[3])


def _same_rng(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return (a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1])) and torch.equal(a[2], b[2])
            and all(torch.equal(x, y) for x, y in zip(a[3], b[3])))


def train_ensemble(cfg: Config, runs: Sequence[tuple[Path, dict[str, str]]]) -> list[Metrics]:
    """Train the ``trainer.ensemble`` members of ``cfg`` into ``runs`` (see :func:`member_runs`).

    Returns every member's metrics. Bad config, data or folders raise before anything is written; when members
    failed (a diverged loss, a failed solve), every member is written first and the first member's error is
    raised then.
    """
    with prepared_members(cfg, runs) as (jobs, rngs):
        ensemble = Ensemble(jobs, rngs)
        try:
            errors = ensemble.fit()
        except (TrainingDiverged, SolverError, NonFiniteOutput, NonFiniteStateError) as err:  # no member's alone:
            errors = [e if e is not None else err for e in ensemble.errors]  # every member is written failed
        results, first = [], None
        for job, err in zip(jobs, errors):
            try:
                results.append(finish(job, lambda: _raise(err) if err is not None else job.state))  # noqa: B023
            except Exception as failure:  # written as failed by finish; the other members go on
                log.error("ensemble member seed %d failed (%s): %s", job.cfg.seed, job.run.path, failure)
                results.append(job.metrics)
                first = first or failure
        if first is not None:
            raise first
        return results


@contextlib.contextmanager
def prepared_members(cfg: Config, runs: Sequence[tuple[Path, dict[str, str]]]
                     ) -> Iterator[tuple[list[Job], list[torch.Tensor]]]:
    """Each member's :class:`~odenet.runner.train.Job` (built as its separate run builds it, its run folder locked
    and its ``config.yaml`` written) and its global torch RNG state after that, for as long as the block runs."""
    validate(cfg)
    k = cfg.trainer.ensemble
    if len(runs) != k:
        raise ValueError(f"{KEY}={k} needs {k} run folders, got {len(runs)}")
    device = resolve_device(cfg.device)
    with contextlib.ExitStack() as locks:
        apply_threads(cfg.threads)
        members: list[dict[str, Any]] = []
        data0, data_draws = None, False
        for i, (path, overrides) in enumerate(runs):
            mcfg = member_config(cfg, cfg.seed + i)
            resolved: dict[str, Any] = OmegaConf.to_container(mcfg, resolve=True)  # type: ignore[assignment]
            run, key = RunDir(path), fingerprint(resolved)
            locks.enter_context(run.lock())
            seed_everything(mcfg.seed)
            before = _rng()
            data = load_data(mcfg) if data0 is None or data_draws else data0
            if data0 is None:  # the data set is drawn with data.seed: reload per member only if it uses the seed
                data0, data_draws = data, not _same_rng(before, _rng())
            model = build_model(mcfg, data.input_shape, data.num_classes).to(device)
            ckpt = run.check_resume(key, resolved)
            members.append(dict(cfg=mcfg, run=run, key=key, data=data, model=model, ckpt=ckpt, rng=_rng(),
                                overrides=overrides))
        done = [0 if m["ckpt"] is None else int(m["ckpt"]["iteration"]) for m in members]
        if len(set(done)) > 1:
            shown = ", ".join(f"{m['run'].path} at {d}" for m, d in zip(members, done))
            raise RunDirError(f"{KEY}={k} resumes only members checkpointed at the same iteration, not {shown}: "
                              f"delete their checkpoint.pt to start over, or resume them with {KEY}=1")
        for m in members:
            m["run"].write_config(OmegaConf.to_yaml(m["cfg"], resolve=True))  # every check has passed
        jobs, rngs = [], []
        for m in members:
            _set_rng(m["rng"])  # the global RNG as the separate run has it after building its model
            jobs.append(prepare(m["cfg"], m["run"], m["key"], m["model"], m["data"], device, m["ckpt"],
                                m["overrides"]))
            rngs.append(_rng()[2])
        yield jobs, rngs


def _raise(err: BaseException) -> Any:
    raise err


class Ensemble:
    """The members' parameters stacked, one optimiser over them, and the batched training loop.

    The forward runs ``vmap`` over ``functional_call``, or, for a model of linear layers, elementwise activations
    and fixed-grid stacks (the MLP models), the faster :func:`batched_model` (``fast=False``: always vmap).
    ``compile`` (default: ``trainer.compile``) compiles the batched forward and loss as one graph
    (:func:`~odenet.runner.accel.compiled_training_loss`; 0.40x -> 0.30x of K sequential steps at K = 8 in
    ``benchmarks/ensemble.py``); the vmap forward stays eager.
    """

    def __init__(self, jobs: list[Job], rngs: list[torch.Tensor], fast: bool = True,
                 compile: bool | None = None) -> None:
        self.jobs, self.rngs, self.k = jobs, rngs, len(jobs)
        self.errors: list[BaseException | None] = [None] * self.k  # each member's error so far (None: training)
        if any(j.trainer.adapter is not None or getattr(j.trainer, "growth", None) is not None for j in jobs):
            raise ValueError(f"{KEY}={self.k} trains a fixed model per member: adaptation and growth change it per "
                             f"run; train the seeds as separate runs ({KEY}=1)")  # validate refuses both first
        self.base = copy.deepcopy(jobs[0].model)  # the template functional_call runs (its own weights unused)
        members = [dict(j.model.named_parameters()) for j in jobs]
        self.params = {n: torch.stack([m[n].detach() for m in members]).requires_grad_(p.requires_grad)
                       for n, p in members[0].items()}
        buffers = [dict(j.model.named_buffers()) for j in jobs]
        self.buffers = {n: torch.stack([b[n] for b in buffers]) for n in buffers[0]}
        opt0 = jobs[0].trainer.optimizer
        name_of = {id(p): n for n, p in members[0].items()}
        names = [[name_of[id(p)] for p in g["params"]] for g in opt0.param_groups]
        groups = [{**{h: v for h, v in g.items() if h != "params"}, "params": [self.params[n] for n in group]}
                  for g, group in zip(opt0.param_groups, names)]
        self.optimizer = type(opt0)(groups)  # type: ignore[call-arg]
        self.shapes = [members[0][n].shape for group in names for n in group]  # by optimiser state index
        self.batched = batched_model(self.base, self.params) if fast and not self.buffers else None
        if self.batched is None and any(isinstance(m, ODEBlock) and m.adaptive for m in self.base.modules()):
            raise ValueError(f"{KEY}={self.k} batches an adaptive solve only for MLP models (each member its own "
                             f"steps); train the seeds as separate runs ({KEY}=1)")  # vmap cannot branch per step
        # trainer.compile: the batched forward and loss as one graph (its backward compiled with it); vmap: eager
        self.compile = ((jobs[0].cfg.trainer.compile if compile is None else compile) and self.batched is not None
                        and not isinstance(self.block, MemberSolve))  # an adaptive solve has no static graph
        self._compiled: dict[Any, Any] = {}  # loss function -> its compiled batched losses
        states = [j.trainer.optimizer.state_dict() for j in jobs]
        if states[0]["state"]:  # resumed: stack the members' optimiser states
            stacked = {idx: {h: torch.stack([s["state"][idx][h] for s in states])
                             if _per_member(v, self.shapes[idx]) else v for h, v in st.items()}
                       for idx, st in states[0]["state"].items()}
            load_optimizer_state(self.optimizer, {"state": stacked, "param_groups": states[0]["param_groups"]})

    @property
    def block(self) -> Any:
        """The block whose forward ran (its solver statistics are every member's, but for a :class:`MemberSolve`)."""
        return (self.batched if self.batched is not None else self.base).block

    def member_block(self, i: int) -> Any:
        """The block whose solver statistics member ``i``'s history reports (its own steps in a MemberSolve)."""
        block = self.block
        return block.member(i) if isinstance(block, MemberSolve) else block

    def _forward_nfe(self) -> list[int]:
        """Each member's field evaluations in the last forward (no per-member block view built: a history row only
        needs one when it is written)."""
        block = self.block
        return [s.nfe for s in block.steps] if isinstance(block, MemberSolve) else [block.nfe] * self.k

    def step(self, losses: torch.Tensor, alive: Sequence[int] | None = None) -> None:
        """One optimiser step on every member: the gradient of the sum of the (finite) losses of the ``alive``
        members (default all); a retired member's gradient is zero, so its zeroed slice stays zero."""
        self.optimizer.zero_grad(set_to_none=True)
        keep = torch.isfinite(losses)
        if alive is not None:
            chosen = torch.zeros_like(keep)
            chosen[list(alive)] = True
            keep &= chosen
        torch.where(keep, losses, torch.zeros_like(losses)).sum().backward()
        self.optimizer.step()

    def losses(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's loss and logits on its own batch: ``xb`` ``(K, B, ...)``, ``yb`` ``(K, B, ...)``."""
        if self.batched is not None:  # one model on (K, B, ...) states with (K, out, in) weights
            if not self.compile:
                return self._batched_losses(xb, yb, loss_fn)
            if loss_fn not in self._compiled:
                self._compiled[loss_fn] = compiled_training_loss(self._batched_losses, loss_fn)
            return self._compiled[loss_fn](xb, yb)

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = functional_call(self.base, (params, buffers), (x,))
            return loss_fn(logits, y), logits

        return vmap(one)(self.params, self.buffers, xb, yb)

    def _batched_losses(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.batched is not None
        logits = self.batched(xb)
        per_example = loss_fn(logits.flatten(0, 1), yb.flatten(0, 1), reduction="none")
        return per_example.reshape(self.k, -1).mean(1), logits

    def sync(self, i: int) -> None:
        """Copy member ``i``'s parameters and optimiser state from the stack into its own model and optimiser."""
        job = self.jobs[i]
        with torch.no_grad():
            for n, p in job.model.named_parameters():
                p.copy_(self.params[n][i])
            for n, b in job.model.named_buffers():
                b.copy_(self.buffers[n][i])
        own = job.trainer.optimizer.state_dict()
        stacked = self.optimizer.state_dict()["state"]
        state = {idx: {h: v[i].clone() if _per_member(v, (self.k, *self.shapes[idx])) else copy.deepcopy(v)
                       for h, v in st.items()} for idx, st in stacked.items()}
        job.trainer.optimizer.load_state_dict({"state": state, "param_groups": own["param_groups"]})

    def fit(self) -> list[BaseException | None]:
        """Train every member from its state's iteration to the end; each member's error (None: trained)."""
        jobs, k = self.jobs, self.k
        job0 = jobs[0]
        cfg, task, total = job0.cfg, job0.data.task, job0.trainer.total
        loss_fn, regression = loss_function(task), task == "regression"
        x_train, y_train = job0.x_train, job0.y_train
        errors = self.errors
        start, t0 = job0.state.iteration, time.perf_counter()
        for model in (self.base, self.batched):
            if model is not None:
                model.train()
        learned = bool(getattr(self.base.block, "learn_steps", False))
        try:
            for it in range(start, total):
                idx = torch.stack([j.trainer.sampler.next() for j in jobs]).to(x_train.device)
                xb, yb = x_train[idx], y_train[idx]
                out = self._forward(xb, yb, loss_fn)
                if out is None:
                    break
                losses, logits = out
                nfe_forward = self._forward_nfe()  # read before the backward pass
                values = losses.detach().cpu().tolist()
                dead = [i for i, v in enumerate(values) if errors[i] is None and not np.isfinite(v)]
                for i in dead:  # as its separate run: its forward raised (vmap checks no state), or its loss
                    errors[i] = self._own_error(i, xb[i]) or diverged(values[i], it + 1, cfg)
                alive = [i for i in range(k) if errors[i] is None]
                if not alive:
                    break
                self.step(losses, alive)
                for i in dead:
                    self._retire(i)
                self._schedule(it, errors, alive)
                alive = [i for i in alive if errors[i] is None]  # a rate out of range: no row, no checkpoint
                if not alive:
                    break
                correct = None if regression else (logits.argmax(-1) == yb).sum(-1).tolist()
                done = it + 1
                log_now = done % cfg.trainer.log_every == 0 or done == total
                ckpt_now = done % cfg.trainer.checkpoint_every == 0 or done == total
                for i in alive:
                    self._step_member(i, done, values[i], correct, len(idx[i]), log_now, ckpt_now, learned,
                                      nfe_forward[i], t0)
        finally:
            for j in jobs:
                if j.trainer.tracker is not None:
                    j.trainer.tracker.close()
        for i in range(k):
            if errors[i] is None:
                self.sync(i)
        return errors

    def _forward(self, xb: torch.Tensor, yb: torch.Tensor, loss_fn: Any
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`losses` of the members; when the shared forward raises (a state not finite, a failed solve), the
        members whose own forward raises fail with that error and are retired, and the rest run again (None: no
        member left). If no member fails alone, the shared error is every remaining member's."""
        while True:
            try:
                return self.losses(xb, yb, loss_fn)
            except (NonFiniteStateError, SolverError) as shared:
                alive = [i for i in range(self.k) if self.errors[i] is None]
                own = {i: self._own_error(i, xb[i]) for i in alive}
                failed = {i: e for i, e in own.items() if e is not None} or dict.fromkeys(alive, shared)
                for i, err in failed.items():
                    log.error("ensemble member seed %d: %s", self.jobs[i].cfg.seed, err)
                    self.errors[i] = err
                    self._retire(i)
                if all(e is not None for e in self.errors):
                    return None

    def _own_error(self, i: int, x: torch.Tensor) -> BaseException | None:
        """What member ``i``'s own forward on its batch ``x`` raises, as in its separate run (None: nothing)."""
        params = {n: p[i].detach() for n, p in self.params.items()}
        buffers = {n: b[i] for n, b in self.buffers.items()}
        try:
            with torch.no_grad():
                functional_call(self.base, (params, buffers), (x,))
        except (NonFiniteStateError, SolverError) as err:
            return err
        return None

    def _retire(self, i: int) -> None:
        """Zero a diverged member's slice of the parameters and optimiser state, so that its NaNs reach no check
        of the shared forward (its run is over: its files stay as they were when it diverged)."""
        with torch.no_grad():
            for p in self.params.values():
                p[i].zero_()
            for p, state in self.optimizer.state.items():
                for value in state.values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value[i].zero_()

    def _schedule(self, it: int, errors: list[BaseException | None], alive: list[int]) -> None:
        """Step every member's own schedule (so its checkpoint holds it) and give the stack member 0's rates."""
        if self.jobs[0].trainer.scheduler is None:
            return
        with warnings.catch_warnings():  # the members' own optimisers never step: the stack steps for them
            warnings.simplefilter("ignore", UserWarning)
            for j in self.jobs:
                j.trainer.scheduler.step()
        own = self.jobs[0].trainer.optimizer.param_groups
        for g, g0 in zip(self.optimizer.param_groups, own):
            g["lr"] = g0["lr"]
        lr = own[0]["lr"]
        if not (np.isfinite(lr) and lr >= 0):
            cfg = self.jobs[0].cfg
            for i in alive:
                errors[i] = TrainingDiverged(f"the schedule {cfg.optimizer.schedule} gave learning rate {lr} at "
                                             f"iteration {it + 1}: check optimizer.gamma / optimizer.milestones")

    def _step_member(self, i: int, done: int, loss: float, correct: list[int] | None, seen: int, log_now: bool,
                     ckpt_now: bool, learned: bool, nfe_forward: int, t0: float) -> None:
        """Member ``i``'s window, history row and checkpoint after iteration ``done``, as its own loop keeps them."""
        job = self.jobs[i]
        state, trainer = job.state, job.trainer
        window = state.window
        window["loss"] += loss * seen
        if correct is not None:
            window["correct"] += int(correct[i])
        window["seen"] += seen
        window["count"] += 1
        state.iteration = done
        if log_now:
            if learned:
                self.sync(i)  # the row reports the member's learned step sizes
            row = trainer.history_row(state, len(job.x_train), correct is None, self.member_block(i), nfe_forward,
                                      {}, t0)
            if not job.cfg.trainer.progress or i == 0:
                acc = "" if row["accuracy"] is None else f"  accuracy {row['accuracy']:.4f}"
                log.info("seed %d: iteration %d/%d  loss %.4f%s  %.1f s", job.cfg.seed, done, trainer.total,
                         row["loss"], acc, row["seconds"])
        if ckpt_now:
            self.sync(i)
            saved = torch.get_rng_state()
            torch.set_rng_state(self.rngs[i])  # the checkpoint holds the member's own global RNG state
            try:
                trainer.run.save_checkpoint(trainer.checkpoint(state))
            finally:
                torch.set_rng_state(saved)


def _per_member(value: Any, shape: Sequence[int]) -> bool:
    """An optimiser state entry shaped like its parameter (moments, momentum buffers: one per member), not shared
    by all (Adam's step count)."""
    return isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(shape)


class MemberSolve(nn.Module):
    """An adaptive ``ODEBlock`` (``backend="odenet"``) on ``(K, B, ...)`` states: each member takes its own steps,
    as its separate run does (:func:`odenet.adaptive.odeint_members`; the batched field gets one time per member),
    and :meth:`member` reports member ``i``'s solver statistics as its separate run's block would."""

    def __init__(self, block: ODEBlock) -> None:
        super().__init__()
        self.inner = block
        self.steps: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.inner
        times = torch.tensor([0.0, block.T], dtype=x.dtype).tolist()  # as the block's own forward rounds T
        try:
            out, self.steps = odeint_members(block.field, x, times, **block.own_solve_options())
        except AdaptiveSolveError as err:
            raise block.solver_error(str(err)) from err
        return out[-1]

    def member(self, i: int) -> ODEBlock:
        """Member ``i``'s view of the last solve (its ``nfe``, ``stats``, ``step_sizes``)."""
        return self.inner.with_steps(self.steps[i])


def _solves_members(block: nn.Module) -> bool:
    """An adaptive ODE block that :class:`MemberSolve` batches (each member its own steps)."""
    return (isinstance(block, ODEBlock) and block.adaptive and block.backend == "odenet" and not block.regularizers
            and "norm" not in block.solver_options)


class BatchedLinear(nn.Module):
    """K linear layers at once: ``x`` ``(K, B, in)`` -> ``(K, B, out)`` with the stacked ``weight`` ``(K, out, in)``
    and ``bias`` ``(K, out)`` (held as given, not copied: the ensemble's stacked parameters)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class BatchedMLPField(nn.Module):
    """K :class:`~odenet.fields.MLPField` s at once on the stacked ``params``: states ``(K, B, dim)``, ``t`` a number
    or ``(K, 1, 1)`` (one time per member). With ``time="concat"`` a layer's weight on ``[x, t]`` is split:
    ``[x, t] W^T + b = x W_x^T + (b + t w_t)`` (equal up to rounding), so an evaluation costs two fused ops per
    layer instead of a concatenation and a matmul on views. :meth:`refresh` takes the split views of the current
    weights (the batched model calls it before each forward)."""

    def __init__(self, field: MLPField, params: dict[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        self.concat, self.act = field.time == "concat", field.act
        self.stacked = [(params[f"{prefix}linears.{i}.weight"], params[f"{prefix}linears.{i}.bias"])
                        for i in range(len(field.linears))]
        self.layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def refresh(self) -> None:
        """The per-forward views: ``W_x^T`` ``(K, in, out)``, ``b`` ``(K, 1, out)``, ``w_t`` ``(K, 1, out)``."""
        self.layers = [(w[..., :-1].transpose(1, 2), b.unsqueeze(1), w[..., -1].unsqueeze(1)) if self.concat
                       else (w.transpose(1, 2), b.unsqueeze(1), None) for w, b in self.stacked]

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, (wx, b, wt) in enumerate(self.layers):
            bias = b if wt is None else torch.addcmul(b, torch.as_tensor(t, dtype=x.dtype, device=x.device), wt)
            x = torch.baddbmm(bias, x, wx)
            if i < last:
                x = self.act(x)
        return x


#: Modules that act on the last dimension or elementwise, so run unchanged on ``(K, B, features)`` states.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Softplus, nn.ELU, nn.Identity, nn.ModuleList,
                nn.Sequential, Classifier, MLPField, DepthIndexedField, Augment)


def batched_model(model: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module | None:
    """``model`` with every ``nn.Linear`` a :class:`BatchedLinear` on the stacked ``params`` (a copy) and an adaptive
    ``ODEBlock`` of ``backend="odenet"`` a :class:`MemberSolve`, or None when some module is not known to run
    unchanged on ``(K, B, features)`` (convolutions, learned steps, a torchdiffeq solve, ...)."""
    for module in model.modules():
        fits = (isinstance(module, (nn.Linear, *_ELEMENTWISE))
                or (isinstance(module, nn.Flatten) and module.start_dim >= 0 and module.end_dim == -1)
                or (isinstance(module, ResidualStack) and not module.learn_steps)
                or (_solves_members(module) and module is getattr(model, "block", None)))  # wrapped below
        if not fits or (isinstance(module, Augment) and module.dim != -1):
            return None
        if isinstance(module, Classifier) and module.amp_dtype is not None:
            return None
    out = copy.deepcopy(model)
    fields: dict[str, BatchedMLPField] = {}  # prefix of a replaced field -> its batched field
    for name, module in list(out.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        if any(name.startswith(prefix) for prefix in fields):
            continue  # inside a field already batched whole
        parent = out.get_submodule(parent_name) if name else None
        if type(module) is MLPField and parent is not None:
            new: nn.Module = BatchedMLPField(module, params, f"{name}.")
            fields[f"{name}."] = new  # type: ignore[assignment]
        elif isinstance(module, nn.Linear) and parent is not None:
            new = BatchedLinear(params[f"{name}.weight"], params.get(f"{name}.bias"))
        elif isinstance(module, nn.Flatten) and parent is not None:
            new = nn.Flatten(module.start_dim + 1, -1)  # after the member dimension
        else:
            continue
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)
    if isinstance(out, Classifier) and isinstance(out.block, ODEBlock):
        out.block = MemberSolve(out.block)  # type: ignore[assignment]
    if fields:
        def refresh(*_: Any) -> None:
            for field in fields.values():
                field.refresh()

        out.register_forward_pre_hook(refresh)
    return out
