"""Measurements on a model: gradient flow, loss landscape and sharpness, smoothness in depth, trajectories."""

from .depth import DepthSmoothness, PowerLawFit, depth_increments, depth_smoothness, loglog_slope
from .gradients import StateGradients, gradient_norms, state_gradients
from .landscape import (
    Direction,
    Slice1D,
    Slice2D,
    interpolate,
    loss_at,
    normalize_direction,
    random_direction,
    slice_1d,
    slice_2d,
)
from .sharpness import EigenEstimate, TraceEstimate, hessian_trace, hessian_vector_product, top_hessian_eigenvalue
from .trajectory import kinetic_energy, step_speeds

__all__ = [
    "Direction",
    "DepthSmoothness",
    "EigenEstimate",
    "PowerLawFit",
    "Slice1D",
    "Slice2D",
    "StateGradients",
    "TraceEstimate",
    "depth_increments",
    "depth_smoothness",
    "gradient_norms",
    "hessian_trace",
    "hessian_vector_product",
    "interpolate",
    "kinetic_energy",
    "loglog_slope",
    "loss_at",
    "normalize_direction",
    "random_direction",
    "slice_1d",
    "slice_2d",
    "state_gradients",
    "step_speeds",
    "top_hessian_eigenvalue",
]
