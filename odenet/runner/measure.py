"""The optional analysis step of a run (config section ``analysis``): ``odenet.analysis`` measurements
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
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis import (
    depth_smoothness,
    gradient_norms,
    hessian_trace,
    interpolate,
    kinetic_energy,
    slice_1d,
    slice_2d,
    step_speeds,
    top_hessian_eigenvalue,
)
from ..analysis._util import stack_times
from ..analysis.adaptive_steps import adaptive_steps
from ..blocks import ODEBlock, ResidualStack
from ..fields import DepthIndexedField
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


def _state_times(model: nn.Module, cfg: AnalysisConfig) -> list[float]:
    block = model.block  # type: ignore[attr-defined]
    if isinstance(block, ResidualStack):
        return _floats(stack_times(block))
    return _floats(torch.linspace(0.0, block.T, cfg.gradient_times + 1, dtype=torch.float64))


def _gradients(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, cfg: AnalysisConfig) -> dict[str, Any]:
    norms = gradient_norms(model, x, y, loss_fn, times=cfg.gradient_times)
    return {"times": _state_times(model, cfg), "norms": _floats(norms)}


def _no_adjoint(model: nn.Module) -> nn.Module:
    """The model with an adjoint ODE block replaced by the direct one (same field): HVPs need double backward."""
    block = model.block  # type: ignore[attr-defined]
    if isinstance(block, ODEBlock) and block.adjoint:
        options = {k: v for k, v in block.options.items() if k != "solver"}
        return model.with_solver(block.solver, **{**options, "adjoint": False})  # type: ignore[attr-defined]
    return model


def at_init(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, cfg: AnalysisConfig) -> dict[str, Any]:
    """Measurements at initialisation (gradient flow only)."""
    out: dict[str, Any] = {}
    if cfg.interpolation:  # kept in memory only, for after_training (not written to metrics.json)
        out["_init_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.gradients:
        out["gradients_init"] = _measure(model, lambda: _gradients(model, x, y, loss_fn, cfg), "gradients_init")
    return out


def _measure(model: nn.Module, fn: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    try:
        return _guard(name, fn)
    finally:
        model.train(was_training)


def after_training(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, cfg: AnalysisConfig,
    init_state: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Every enabled measurement on the trained model (``init_state``: the weights at init, for ``interpolation``)."""
    out: dict[str, Any] = {}
    block = model.block  # type: ignore[attr-defined]
    if cfg.gradients:
        out["gradients"] = _measure(model, lambda: _gradients(model, x, y, loss_fn, cfg), "gradients")
    if cfg.landscape:
        span = (-cfg.span, cfg.span)

        def landscape() -> dict[str, Any]:
            s1 = slice_1d(model, x, y, loss_fn, steps=cfg.grid, span=span, seed=cfg.seed)
            s2 = slice_2d(model, x, y, loss_fn, steps=cfg.grid, span=span, seed=cfg.seed)
            return {"alphas": _floats(s1.alphas), "slice_1d": _floats(s1.losses), "axis": _floats(s2.alphas),
                    "slice_2d": [_floats(row) for row in s2.losses]}

        out["landscape"] = _measure(model, landscape, "landscape")
    if cfg.interpolation:
        def interpolation() -> dict[str, Any]:
            if init_state is None:
                raise ValueError("no weights at initialisation (the run resumed from a checkpoint)")
            s = interpolate(model, init_state, model.state_dict(), x, y, loss_fn, steps=cfg.grid, span=(-0.5, 1.5))
            return {"alphas": _floats(s.alphas), "losses": _floats(s.losses)}

        out["interpolation"] = _measure(model, interpolation, "interpolation")
    if cfg.sharpness:
        def sharpness() -> dict[str, Any]:
            m = _no_adjoint(model)
            eig = top_hessian_eigenvalue(m, x, y, loss_fn, max_iters=cfg.hessian_iters, tol=cfg.hessian_tol,
                                         seed=cfg.seed)
            tr = hessian_trace(m, x, y, loss_fn, samples=cfg.trace_samples, seed=cfg.seed)
            return {"top_eigenvalue": eig.eigenvalue, "iterations": eig.iterations, "converged": eig.converged,
                    "trace": tr.mean, "trace_stderr": tr.stderr, "trace_samples": tr.samples}

        out["sharpness"] = _measure(model, sharpness, "sharpness")
    if cfg.depth:
        def depth() -> dict[str, Any]:
            if not isinstance(block.field, DepthIndexedField):
                raise ValueError("depth smoothness needs a depth-indexed field (field.untied=true)")
            d = depth_smoothness(block.field)
            return {"layers": block.field.depth, "increments": _floats(d.increments), "max": d.max, "rss": d.rss}

        out["depth"] = _measure(model, depth, "depth")
    if cfg.trajectory:
        def trajectory() -> dict[str, Any]:
            with torch.no_grad():
                speeds = step_speeds(model, x, times=cfg.gradient_times)
                energy = kinetic_energy(model, x, times=cfg.gradient_times)
            return {"kinetic_energy": float(energy), "step_speeds": _floats(speeds)}

        out["trajectory"] = _measure(model, trajectory, "trajectory")
    if cfg.adaptive_steps:
        out["adaptive_steps"] = _measure(model, lambda: _adaptive_steps(model, x, cfg), "adaptive_steps")
    return out


def _adaptive_steps(model: nn.Module, x: Tensor, cfg: AnalysisConfig) -> dict[str, Any]:
    """The trained field re-solved by ``cfg.adaptive_solver`` (float64): its accepted steps, and the block's own."""
    s = adaptive_steps(model, x, solver=cfg.adaptive_solver, rtol=cfg.adaptive_rtol, atol=cfg.adaptive_atol)
    block = model.block  # type: ignore[attr-defined]
    own = _floats(block.step_sizes) if isinstance(block, ResidualStack) else None
    return {"solver": s.solver, "rtol": s.rtol, "atol": s.atol, "T": s.T, "step_sizes": s.sizes,
            "step_starts": s.starts, "nfe": s.nfe, "steps_accepted": s.accepted, "steps_rejected": s.rejected,
            "block_step_sizes": own}


def enabled(cfg: AnalysisConfig) -> bool:
    return any((cfg.gradients, cfg.landscape, cfg.interpolation, cfg.sharpness, cfg.depth, cfg.trajectory,
                cfg.adaptive_steps))
