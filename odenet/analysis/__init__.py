"""Measurements on a model: gradient flow, loss landscape and sharpness, smoothness in depth, trajectories.

:mod:`odenet.analysis.step_size` (Ott et al.'s step-size ablation: critical step size, folds of the
step map, decision regions in the plane) also registers report sections and a plot with
:mod:`odenet.report`, which imports it before writing a report; so does
:mod:`odenet.analysis.smoothness_report` (degradation, gradient flow, loss landscape and depth-smoothness
sections and plots, read from ``metrics.json["analysis"]`` as written by :mod:`odenet.measure`).
"""

from .adaptive_steps import AdaptiveSteps, adaptive_steps, concentration, local_step_sizes, step_shares
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
from .step_size import (
    CriticalStepSize,
    PlaneModel,
    StepCheck,
    critical_step_sizes,
    fold_fraction,
    is_finer,
    plane_figure,
    step_factor_table,
    step_jacobian_determinants,
)
from .trajectory import kinetic_energy, step_speeds

__all__ = [
    "AdaptiveSteps",
    "adaptive_steps",
    "concentration",
    "local_step_sizes",
    "step_shares",
    "CriticalStepSize",
    "Direction",
    "DepthSmoothness",
    "EigenEstimate",
    "PlaneModel",
    "PowerLawFit",
    "Slice1D",
    "Slice2D",
    "StateGradients",
    "StepCheck",
    "TraceEstimate",
    "critical_step_sizes",
    "depth_increments",
    "depth_smoothness",
    "fold_fraction",
    "gradient_norms",
    "hessian_trace",
    "hessian_vector_product",
    "interpolate",
    "is_finer",
    "kinetic_energy",
    "loglog_slope",
    "loss_at",
    "normalize_direction",
    "plane_figure",
    "random_direction",
    "slice_1d",
    "slice_2d",
    "state_gradients",
    "step_factor_table",
    "step_jacobian_determinants",
    "step_speeds",
    "top_hessian_eigenvalue",
]
