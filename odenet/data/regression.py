"""Regression tasks generated from ``seed``: a linear map (Sander et al. 2022) and a tanh ODE's flow map."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._common import _check_seed, _noise, _rngs, _size
from .registry import DataOptions, Dataset, register_dataset


def _gaussian_inputs(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return rng.standard_normal((n, dim))


@register_dataset("linear_regression")
def load_linear_regression(o: DataOptions) -> Dataset:
    """Sander et al. (2022)'s linear task: ``x ~ N(0, I_d)``, ``y = A x`` with ``A = I + noise * G``.

    ``G`` has i.i.d. standard normal entries drawn from ``seed`` (default ``noise`` 0.5, ``dim`` 2,
    1000 train / 1000 test points). A linear ResNet ``x_{k+1} = x_k + W_k x_k / L`` (``field=linear``,
    ``model.head=identity``) can fit it exactly. Uses ``n_train, n_test, seed, dim, noise``.
    """
    dim = _size("dim", o.dim, 2)
    rng_a = np.random.default_rng([_check_seed(o.seed), 2])
    A = np.eye(dim) + _noise(o.noise, 0.5) * rng_a.standard_normal((dim, dim))
    rng_tr, rng_te = _rngs(o.seed)
    x_tr = _gaussian_inputs(rng_tr, _size("n_train", o.n_train, 1000), dim)
    x_te = _gaussian_inputs(rng_te, _size("n_test", o.n_test, 1000), dim)
    f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return Dataset("linear_regression", f(x_tr), f(x_tr @ A.T), f(x_te), f(x_te @ A.T), num_classes=dim,
                   task="regression")


def _tanh_ode_targets(x: np.ndarray, W0: np.ndarray, W1: np.ndarray, b: np.ndarray, steps: int = 200) -> np.ndarray:
    """``x(1)`` of ``dx/dt = tanh((W0 + t W1) x + b)`` from ``x(0) = x`` by rk4 with ``steps`` steps."""

    def F(t: float, z: np.ndarray) -> np.ndarray:
        return np.tanh(z @ (W0 + t * W1).T + b)

    h, z = 1.0 / steps, x.copy()
    for k in range(steps):
        t = k * h
        k1 = F(t, z)
        k2 = F(t + h / 2, z + h / 2 * k1)
        k3 = F(t + h / 2, z + h / 2 * k2)
        k4 = F(t + h, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


@register_dataset("tanh_ode")
def load_tanh_ode(o: DataOptions) -> Dataset:
    """A nonlinear regression task in the spirit of Cohen et al. (2021)'s synthetic data.

    ``x ~ N(0, I_d)``; ``y = x(1)`` for the non-autonomous ODE ``dx/dt = tanh((W0 + t W1) x + b)``
    with a random smooth-in-time weight ``W(t) = W0 + t W1`` (entries ``N(0, 1/d)``, scaled by 2) and
    bias ``N(0, 0.25)``, drawn from ``seed``; integrated with rk4 (200 steps). Targets are generated
    by a smooth ODE, so a depth-indexed ResNet *can* fit them with weights smooth in depth.
    Default ``dim`` 2 (as configured), 1000 train / 1000 test points; ``noise`` (default 0) adds
    Gaussian noise to the training targets. Uses ``n_train, n_test, seed, dim, noise``.
    """
    dim = _size("dim", o.dim, 2)
    rng_w = np.random.default_rng([_check_seed(o.seed), 3])
    W0 = 2.0 * rng_w.standard_normal((dim, dim)) / math.sqrt(dim)
    W1 = 2.0 * rng_w.standard_normal((dim, dim)) / math.sqrt(dim)
    b = 0.5 * rng_w.standard_normal(dim)
    rng_tr, rng_te = _rngs(o.seed)
    x_tr = _gaussian_inputs(rng_tr, _size("n_train", o.n_train, 1000), dim)
    x_te = _gaussian_inputs(rng_te, _size("n_test", o.n_test, 1000), dim)
    y_tr = _tanh_ode_targets(x_tr, W0, W1, b) + _noise(o.noise, 0.0) * rng_tr.standard_normal(x_tr.shape)
    y_te = _tanh_ode_targets(x_te, W0, W1, b)
    f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return Dataset("tanh_ode", f(x_tr), f(y_tr), f(x_te), f(y_te), num_classes=dim, task="regression")


@register_dataset("digits_identity")
def load_digits_identity(o: DataOptions) -> Dataset:
    """The identity task ``y = x`` on scikit-learn's digits features (64 pixels; the ``digits`` split).

    Pixels are centred by the training mean and divided by one scale ``s`` (``s²``: the training set's mean
    per-pixel variance), so predicting 0 scores a training MSE of exactly 1 and an MSE is the fraction of the
    inputs' variance not reproduced. Uses ``n_train, n_test`` (as ``digits``).
    """
    from .images import load_digits

    d = load_digits(DataOptions(n_train=o.n_train, n_test=o.n_test))
    mean = d.x_train.mean(0)
    scale = float(((d.x_train - mean) ** 2).mean()) ** 0.5
    x_tr, x_te = (d.x_train - mean) / scale, (d.x_test - mean) / scale
    return Dataset("digits_identity", x_tr, x_tr.clone(), x_te, x_te.clone(), num_classes=x_tr.shape[1],
                   task="regression")
