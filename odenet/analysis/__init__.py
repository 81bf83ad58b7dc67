"""Measurements on a model: gradient flow, loss landscape and sharpness, smoothness in depth, trajectories,
adaptive step sizes, folds of the step map and block lesions.

Pure functions on models and tensors (torch and numpy only); the reports that read their results live in
:mod:`odenet.reports`, the runner's measurement registry in :mod:`odenet.runner.measure`.
"""

from .adaptive_steps import AdaptiveSteps, adaptive_steps, concentration, local_step_sizes, step_shares
from .depth import DepthSmoothness, PowerLawFit, depth_increments, depth_smoothness, loglog_slope
from .folds import fold_fraction, fold_mask, predict, step_jacobian_determinants
from .gradients import StateGradients, gradient_norms, state_gradients
from .identity import (
    LayerInfo,
    held_out_recoverability,
    jacobian_ranks,
    jacobians,
    low_rank_error,
    numerical_ranks,
    random_layer_info,
    recoverability,
)
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
from .lesion import (
    Evenness,
    evenness,
    lesion_accuracy,
    lesioned_forward,
    random_lesions,
    relative_updates,
    single_lesions,
)
from .sharpness import EigenEstimate, TraceEstimate, hessian_trace, hessian_vector_product, top_hessian_eigenvalue
from .shattering import (
    LineGradients,
    Shattering,
    ShatteringSummary,
    autocorrelation,
    line_gradients,
    line_shattering,
    power_spectrum,
    readout,
    segment_pairs,
    shattering_summary,
    spectral_slope,
)
from .trajectory import kinetic_energy, step_speeds

__all__ = [
    "AdaptiveSteps",
    "adaptive_steps",
    "concentration",
    "local_step_sizes",
    "step_shares",
    "Direction",
    "DepthSmoothness",
    "EigenEstimate",
    "Evenness",
    "PowerLawFit",
    "Slice1D",
    "Slice2D",
    "StateGradients",
    "TraceEstimate",
    "depth_increments",
    "depth_smoothness",
    "evenness",
    "fold_fraction",
    "fold_mask",
    "predict",
    "gradient_norms",
    "LayerInfo",
    "held_out_recoverability",
    "jacobian_ranks",
    "jacobians",
    "low_rank_error",
    "numerical_ranks",
    "random_layer_info",
    "recoverability",
    "hessian_trace",
    "hessian_vector_product",
    "interpolate",
    "kinetic_energy",
    "lesion_accuracy",
    "lesioned_forward",
    "loglog_slope",
    "loss_at",
    "normalize_direction",
    "random_direction",
    "random_lesions",
    "relative_updates",
    "single_lesions",
    "LineGradients",
    "Shattering",
    "ShatteringSummary",
    "autocorrelation",
    "line_gradients",
    "power_spectrum",
    "readout",
    "segment_pairs",
    "line_shattering",
    "shattering_summary",
    "spectral_slope",
    "slice_1d",
    "slice_2d",
    "state_gradients",
    "step_jacobian_determinants",
    "step_speeds",
    "top_hessian_eigenvalue",
]
