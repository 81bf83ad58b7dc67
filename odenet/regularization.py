"""Regularised dynamics (Finlay et al. 2020, "How to train your neural ODE").

The penalties are integrals along the trajectory, so they are integrated *alongside the state*: the
block solves the augmented system

    dx/dt = F(t, x),    dE/dt = ||F(t, x)||^2,    dJ/dt = ||eps^T dF/dx (t, x)||^2,

with the same integrator as the state (an Euler stack sums ``h ||F(t_k, x_k)||^2``; dopri5 controls
the error of all three). ``E(T)`` is the kinetic energy and ``J(T)`` the Hutchinson estimate of
``int ||dF/dx||_F^2 dt``: for noise with ``E[eps eps^T] = I``, ``E[||eps^T A||^2] = ||A||_F^2``. One
``eps`` per sample is drawn per solve and held fixed along it, as in Finlay et al.

Norms are sums over a sample's features; ``RegularizedDynamics.split`` returns per-sample integrals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from ._args import ArgumentTypeError

__all__ = ["REGULARIZERS", "NOISES", "RegularizedDynamics", "check_regularizers"]

REGULARIZERS = ("kinetic", "jacobian")
NOISES = ("gaussian", "rademacher")


def check_regularizers(regularizers: Sequence[str], noise: str) -> tuple[str, ...]:
    """The regulariser names in canonical order; a ValueError for an unknown name or noise."""
    if isinstance(regularizers, (str, bytes)) or not isinstance(regularizers, Iterable):
        raise ArgumentTypeError(
            f"regularizers must be a sequence of names among {list(REGULARIZERS)} (e.g. ['kinetic']), "
            f"got {regularizers!r}"
        )
    regularizers = tuple(regularizers)
    for name in regularizers:
        if not isinstance(name, str):
            raise ArgumentTypeError(f"regularizers must be names among {list(REGULARIZERS)}, got {name!r}")
    if not isinstance(noise, str):
        raise ArgumentTypeError(f"noise must be one of {list(NOISES)}, got {noise!r} ({type(noise).__name__})")
    unknown = set(regularizers) - set(REGULARIZERS)
    if unknown:
        raise ValueError(f"unknown regularizers {sorted(unknown)}; regularizers must be among {list(REGULARIZERS)}")
    if noise not in NOISES:
        raise ValueError(f"unknown noise={noise!r} for the Hutchinson estimator; noise must be one of {list(NOISES)}")
    return tuple(name for name in REGULARIZERS if name in regularizers)


def hutchinson_noise(like: Tensor, noise: str) -> Tensor:
    """Probe vectors with ``E[eps eps^T] = I``: standard normal, or random signs (Rademacher, lower variance)."""
    if noise == "gaussian":
        return torch.randn_like(like)
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


class RegularizedDynamics(nn.Module):
    """The augmented field on a flat state ``z = [x.flatten(1), E, J]`` of shape ``(batch, features + k)``.

    ``augment(x)`` builds ``z0`` (integrals at zero), ``split(z)`` returns ``x`` in its own shape and a
    dict of per-sample integrals. Works with any integrator that takes a tensor state.
    """

    def __init__(self, field: nn.Module, regularizers: Sequence[str], noise: str = "gaussian") -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be an nn.Module with forward(t, x) -> dx/dt, got {type(field).__name__}")
        self.field = field
        self.regularizers = check_regularizers(regularizers, noise)
        if not self.regularizers:
            raise ValueError("RegularizedDynamics needs at least one regularizer")
        self.noise_kind = noise
        self.shape: torch.Size | None = None
        self.probe: Tensor | None = None

    def augment(self, x: Tensor) -> Tensor:
        """``z0``: the flattened state followed by one zero column per regulariser (draws a new probe)."""
        self.shape = x.shape
        self.probe = hutchinson_noise(x, self.noise_kind) if "jacobian" in self.regularizers else None
        zeros = x.new_zeros(x.shape[0], len(self.regularizers))
        return torch.cat([x.flatten(1), zeros], dim=1)

    def split(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The state ``x`` (original shape, leading dims of ``z`` kept) and the per-sample integrals."""
        assert self.shape is not None, "augment() must come first"
        k = len(self.regularizers)
        lead = z.shape[:-1][:-1]  # e.g. the time axis of a trajectory
        x = z[..., :-k].reshape(*lead, *self.shape)
        return x, {name: z[..., -k + i] for i, name in enumerate(self.regularizers)}

    def forward(self, t: Tensor | float, z: Tensor) -> Tensor:
        assert self.shape is not None, "augment() must come first"
        k = len(self.regularizers)
        x = z[:, :-k].reshape(self.shape)
        with torch.enable_grad():
            if "jacobian" in self.regularizers and not x.requires_grad:
                x = x.detach().requires_grad_(True)  # nothing upstream needs a gradient: make x a leaf
            f = self.field(t, x)
            if f.shape != x.shape:
                raise ValueError(
                    f"the field returned shape {tuple(f.shape)} for a state of shape {tuple(x.shape)}; "
                    "a vector field must return dx/dt shaped like x"
                )
            rates = []
            for name in self.regularizers:
                if name == "kinetic":
                    rates.append(f.pow(2).flatten(1).sum(1))
                else:
                    # eps^T dF/dx (one vector-Jacobian product); create_graph: the penalty is trained through.
                    rates.append(self._jacobian_rate(f, x))
        return torch.cat([f.flatten(1), torch.stack(rates, dim=1)], dim=1)

    def _jacobian_rate(self, f: Tensor, x: Tensor) -> Tensor:
        """``||eps^T dF/dx||^2`` per sample: one vector-Jacobian product, kept in the graph (trained through)."""
        if not f.requires_grad:  # F does not depend on x (nor on anything trainable)
            return f.new_zeros(f.shape[0])
        (vjp,) = torch.autograd.grad(f, x, self.probe, create_graph=True, allow_unused=True)
        if vjp is None:  # F does not depend on x
            return f.new_zeros(f.shape[0])
        return vjp.pow(2).flatten(1).sum(1)
