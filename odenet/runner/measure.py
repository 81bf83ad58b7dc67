"""The optional analysis step of a run (config section ``analysis``), a registry of measurements (config flag,
phase, function): ``odenet.analysis`` measurements
on the model at initialisation and after training, as JSON-ready dicts for ``metrics.json["analysis"]``.

Each measurement uses the first ``analysis.points`` training examples, the model in eval mode and the
run's loss (cross-entropy for classification, mean squared error for regression). A measurement that
does not apply (the trajectory of a plain net, depth smoothness of a shared field) or fails is
recorded as ``{"error": reason}`` and the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..analysis import (
    depth_smoothness,
    evenness,
    gradient_norms,
    hessian_trace,
    interpolate,
    kinetic_energy,
    lesion_accuracy,
    line_shattering,
    random_lesions,
    relative_updates,
    single_lesions,
    slice_1d,
    slice_2d,
    step_speeds,
    top_hessian_eigenvalue,
)
from ..analysis._util import split_model, stack_times
from ..analysis.adaptive_steps import adaptive_steps
from ..analysis.identity import held_out_recoverability, jacobian_ranks, random_layer_info
from ..blocks import ODEBlock, ResidualStack
from ..fields import DepthIndexedField
from ..models import Classifier
from .config import AnalysisConfig

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


def _floats(t: Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().reshape(-1)]


def _guard(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # a measurement must never stop a run
        log.warning("analysis %s failed: %s", name, err)
        return {"error": f"{type(err).__name__}: {err}"}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _state_times(model: Classifier, cfg: AnalysisConfig) -> list[float]:
    block = model.block
    if isinstance(block, ResidualStack):
        return _floats(stack_times(block))
    return _floats(torch.linspace(0.0, block.T, cfg.gradient_times + 1, dtype=torch.float64))


def _no_adjoint(model: Classifier) -> Classifier:
    """The model with an adjoint ODE block replaced by the direct one (same field): HVPs need double backward."""
    block = model.block
    if isinstance(block, ODEBlock) and block.adjoint:
        return model.with_solver(block.solver, adjoint=False)  # with_solver carries the other options over
    return model


@dataclass(frozen=True)
class Context:
    """What a measurement sees: the model, the first ``analysis.points`` training examples, the loss, the config."""

    model: Classifier
    x: Tensor
    y: Tensor
    loss_fn: LossFn
    cfg: AnalysisConfig
    init_state: dict[str, Tensor] | None = None
    test: tuple[Tensor, Tensor] | None = None  # the test set (inputs, targets), for measurements that need it


MeasureFn = Callable[[Context], dict[str, Any]]


@dataclass(frozen=True)
class Measurement:
    """A measurement written to ``metrics.json["analysis"][key]`` when ``analysis.<flag>`` is true."""

    key: str
    flag: str
    phase: str  # init | trained
    fn: MeasureFn


#: Every measurement, in the order they run and appear in ``metrics.json``.
MEASUREMENTS: list[Measurement] = []


def register_measurement(key: str, flag: str, phase: str = "trained") -> Callable[[MeasureFn], MeasureFn]:
    """Decorator adding a measurement: ``fn(ctx) -> dict`` run when ``analysis.<flag>`` is true."""
    if phase not in ("init", "trained"):
        raise ValueError(f"phase must be init or trained, got {phase!r}")

    def deco(fn: MeasureFn) -> MeasureFn:
        MEASUREMENTS.append(Measurement(key, flag, phase, fn))
        return fn

    return deco


def _gradients(c: Context) -> dict[str, Any]:
    norms = gradient_norms(c.model, c.x, c.y, c.loss_fn, times=c.cfg.gradient_times)
    return {"times": _state_times(c.model, c.cfg), "norms": _floats(norms)}


register_measurement("gradients_init", "gradients", phase="init")(_gradients)
register_measurement("gradients", "gradients")(_gradients)


def _shattering(c: Context) -> dict[str, Any]:
    """Balduzzi et al.'s shattered gradients on segments between training examples of different classes."""
    cfg = c.cfg
    s = line_shattering(c.model, c.x, c.y, lines=cfg.shattering_lines, points=cfg.shattering_points, seed=cfg.seed)
    finite = [v for v in s.lag1 if v == v]
    slopes = [v for v in s.slope if v == v]
    return {"points": cfg.shattering_points, "pairs": [list(p) for p in s.pairs], "lag1": s.lag1,
            "lag1_mean": sum(finite) / len(finite) if finite else None, "lag1_uncentred": s.lag1_uncentred,
            "slope": s.slope, "slope_mean": sum(slopes) / len(slopes) if slopes else None, "rms": s.rms,
            "autocorrelation": _floats(s.autocorrelation), "frequencies": _floats(s.frequencies),
            "power": _floats(s.power), "example": _floats(s.example)}


register_measurement("shattering_init", "shattering", phase="init")(_shattering)
register_measurement("shattering", "shattering")(_shattering)


@register_measurement("landscape", "landscape")
def _landscape(c: Context) -> dict[str, Any]:
    span = (-c.cfg.span, c.cfg.span)
    s1 = slice_1d(c.model, c.x, c.y, c.loss_fn, steps=c.cfg.grid, span=span, seed=c.cfg.seed)
    s2 = slice_2d(c.model, c.x, c.y, c.loss_fn, steps=c.cfg.grid, span=span, seed=c.cfg.seed)
    return {"alphas": _floats(s1.alphas), "slice_1d": _floats(s1.losses), "axis": _floats(s2.alphas),
            "slice_2d": [_floats(row) for row in s2.losses]}


@register_measurement("interpolation", "interpolation")
def _interpolation(c: Context) -> dict[str, Any]:
    if c.init_state is None:
        raise ValueError("no weights at initialisation (the run resumed from a checkpoint)")
    s = interpolate(c.model, c.init_state, c.model.state_dict(), c.x, c.y, c.loss_fn, steps=c.cfg.grid,
                    span=(-0.5, 1.5))
    return {"alphas": _floats(s.alphas), "losses": _floats(s.losses)}


@register_measurement("sharpness", "sharpness")
def _sharpness(c: Context) -> dict[str, Any]:
    m, cfg = _no_adjoint(c.model), c.cfg
    eig = top_hessian_eigenvalue(m, c.x, c.y, c.loss_fn, max_iters=cfg.hessian_iters, tol=cfg.hessian_tol,
                                 seed=cfg.seed)
    tr = hessian_trace(m, c.x, c.y, c.loss_fn, samples=cfg.trace_samples, seed=cfg.seed)
    return {"top_eigenvalue": eig.eigenvalue, "iterations": eig.iterations, "converged": eig.converged,
            "trace": tr.mean, "trace_stderr": tr.stderr, "trace_samples": tr.samples}


@register_measurement("depth", "depth")
def _depth(c: Context) -> dict[str, Any]:
    field = c.model.block.field
    if not isinstance(field, DepthIndexedField):
        raise ValueError("depth smoothness needs a depth-indexed field (field.untied=true)")
    d = depth_smoothness(field)
    return {"layers": field.depth, "increments": _floats(d.increments), "max": d.max, "rss": d.rss}


@register_measurement("trajectory", "trajectory")
def _trajectory(c: Context) -> dict[str, Any]:
    with torch.no_grad():
        speeds = step_speeds(c.model, c.x, times=c.cfg.gradient_times)
        energy = kinetic_energy(c.model, c.x, times=c.cfg.gradient_times)
    return {"kinetic_energy": float(energy), "step_speeds": _floats(speeds)}


@register_measurement("adaptive_steps", "adaptive_steps")
def _adaptive_steps(c: Context) -> dict[str, Any]:
    """The trained field re-solved by ``cfg.adaptive_solver`` (float64): its accepted steps, and the block's own."""
    cfg = c.cfg
    s = adaptive_steps(c.model, c.x, solver=cfg.adaptive_solver, rtol=cfg.adaptive_rtol, atol=cfg.adaptive_atol)
    block = c.model.block
    own = _floats(block.step_sizes) if isinstance(block, ResidualStack) else None
    return {"solver": s.solver, "rtol": s.rtol, "atol": s.atol, "T": s.T, "step_sizes": s.sizes,
            "step_starts": s.starts, "nfe": s.nfe, "steps_accepted": s.accepted, "steps_rejected": s.rejected,
            "block_step_sizes": own}


def _block_info(c: Context) -> dict[str, Any]:
    """How much of its input the block keeps: Jacobian rank of the block map and R² of recovering its input."""
    stem, block, _ = split_model(c.model)
    with torch.no_grad():
        state = stem(c.x)
        out = block(state)
    if state.ndim != 2:
        raise ValueError(f"needs a vector state (B, d), got shape {tuple(state.shape)}")
    ranks = jacobian_ranks(block, state[:256]).double()
    return {"dim": int(state.shape[1]), "rank_points": len(ranks), "rank_mean": float(ranks.mean()),
            "rank_min": float(ranks.min()), "r2": held_out_recoverability(state, out)}


register_measurement("identity_init", "identity", phase="init")(_block_info)


@register_measurement("identity", "identity")
def _identity(c: Context) -> dict[str, Any]:
    out = _block_info(c)
    x = c.x.reshape(len(c.x), -1)
    d = x.shape[1]
    widths = sorted({max(1, round(d * f)) for f in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4)})
    info = random_layer_info(x, widths, seed=c.cfg.seed)
    out["random_layers"] = {"dim": info.dim, "widths": info.widths, "r2": info.r2, "rank": info.rank}
    return out


def lesion_ks(steps: int) -> list[int]:
    """How many random blocks ``analysis.lesion`` deletes at once: ``1, 2, 4, ...`` below ``steps``."""
    return [2**i for i in range(steps.bit_length()) if 2**i < steps]


def _lesion_stack(c: Context) -> ResidualStack:
    block = c.model.block
    if not isinstance(block, ResidualStack):
        raise ValueError("lesions need a discrete stack (block=residual or plain, a fixed-step solver)")
    return block


def _relative_updates(c: Context) -> dict[str, Any]:
    """The relative update per block on the analysis points, and its evenness."""
    with torch.no_grad():
        rel = relative_updates(c.model, c.x)
    even = evenness(rel)
    return {"relative_update": _floats(rel), "evenness_entropy": even.entropy, "evenness_cv": even.cv,
            "evenness_min_share": even.min_share}


@register_measurement("lesion_init", "lesion", phase="init")
def _lesion_init(c: Context) -> dict[str, Any]:
    """The relative updates at initialisation: the control for their evenness after training."""
    _lesion_stack(c)
    return _relative_updates(c)


@register_measurement("lesion", "lesion")
def _lesion(c: Context) -> dict[str, Any]:
    """Veit et al. (2016)'s lesions of a stack on the test set (the analysis points without one), and its relative
    updates on the analysis points."""
    block = _lesion_stack(c)
    x, y = c.test if c.test is not None else (c.x, c.y)
    if torch.is_floating_point(y):
        raise ValueError("lesion accuracy needs a classification task")
    ks = lesion_ks(block.steps)
    with torch.no_grad():
        intact = lesion_accuracy(c.model, x, y)  # nothing deleted: through the same stem, steps and head
        single = single_lesions(c.model, x, y)
        rand = random_lesions(c.model, x, y, ks, draws=c.cfg.lesion_draws, seed=c.cfg.seed)
    return {"split": "test" if c.test is not None else "train", "points": len(x), "steps": block.steps,
            "step_size": block.T / block.steps, "intact_accuracy": intact, "single": _floats(single),
            "random_k": ks, "random": [_floats(row) for row in rand], **_relative_updates(c)}


def _run(phase: str, c: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    was_training = c.model.training
    c.model.eval()
    try:
        for m in MEASUREMENTS:
            if m.phase == phase and getattr(c.cfg, m.flag):
                out[m.key] = _guard(m.key, lambda m=m: m.fn(c))
    finally:
        c.model.train(was_training)
    return out


def enabled(cfg: AnalysisConfig) -> bool:
    """Any measurement switched on."""
    return any(getattr(cfg, m.flag) for m in MEASUREMENTS)


def at_init(model: Classifier, x: Tensor, y: Tensor, loss_fn: LossFn, cfg: AnalysisConfig) -> dict[str, Any]:
    """Measurements at initialisation; ``_init_state`` (kept in memory only) when ``interpolation`` needs it."""
    out: dict[str, Any] = {}
    if cfg.interpolation:
        out["_init_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.update(_run("init", Context(model, x, y, loss_fn, cfg)))
    return out


def after_training(
    model: Classifier, x: Tensor, y: Tensor, loss_fn: LossFn, cfg: AnalysisConfig,
    init_state: dict[str, Tensor] | None = None, test: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Every enabled measurement on the trained model (``init_state``: the weights at init, for ``interpolation``;
    ``test``: the test set, for ``lesion``)."""
    return _run("trained", Context(model, x, y, loss_fn, cfg, init_state, test))
