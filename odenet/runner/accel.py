"""Keeping an accelerator busy: on-device augmentation, mixed precision's gradient scaler, ``torch.compile``.

The runner (``odenet.train``) holds the whole data set as tensors on the device and draws each batch by
indexing them there (``BatchSampler``): no worker processes, no host-to-device copy per batch, so the
GPU is never left waiting on a CPU loader (train and test in float32: MNIST 220 MB, CIFAR-10 737 MB).
Random crops and flips (``data.augment``) are done on the batch, on the device, by :func:`augment_images`.

Mixed precision (``trainer.amp``) lives in :class:`odenet.models.Classifier` (autocast on the stem, head and
fixed-step blocks, float32 inside an adaptive ODE block); float16 also needs the :func:`grad_scaler` here.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch import Tensor, nn

from ..models import Classifier

log = logging.getLogger(__name__)

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available: use device=auto or device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def augment_images(x: Tensor, kind: str, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """A randomly augmented copy of the image batch ``x`` ``(B, C, H, W)``, computed on ``x``'s device.

    ``crop``: zero-pad by ``padding`` pixels on each side, then cut an ``H x W`` window at a random offset
    per image (torchvision's ``RandomCrop(size, padding)``); ``flip``: mirror each image left-right with
    probability 1/2 (for CIFAR-10, not for digits); ``crop_flip``: both. ``none`` returns ``x``.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown data.augment={kind!r}; data.augment must be one of {list(AUGMENTATIONS)}")
    if kind == "none":
        return x
    if x.ndim != 4:
        raise ValueError(f"data.augment={kind} needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    if kind in ("crop", "crop_flip") and padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), device=x.device, generator=generator)
        padded = nn.functional.pad(x, (padding, padding, padding, padding))
        rows = (offsets[0] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (offsets[1] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    if kind in ("flip", "crop_flip"):
        flip = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def grad_scaler(model: Classifier, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for float16 autocast only (bfloat16 has float32's range: no scaling needed).

    Disabled it is a pass-through: ``scale(loss)`` is ``loss`` and ``step(opt)`` is ``opt.step()``.
    """
    enabled = model.amp_dtype == torch.float16
    if not hasattr(torch.amp, "GradScaler"):  # torch < 2.3: CUDA's scaler only
        return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")
    return torch.amp.GradScaler(device.type, enabled=enabled)


def compile_field(model: Classifier) -> None:
    """``torch.compile`` the block's vector field in place (``nn.Module.compile``: the state_dict keys stay).

    Every block made by ``with_solver`` shares the field, so evaluations use the compiled field too. On CPU
    the compiler needs a C++ toolchain (gcc); the first calls are slow (compilation, then a recompile for
    new shapes such as the last, smaller batch).
    """
    field = model.block.field
    if not hasattr(field, "compile"):
        raise ValueError(f"trainer.compile=true needs torch >= 2.2 (nn.Module.compile); this is {torch.__version__}")
    field.compile()


def describe_precision(model: Classifier) -> str:
    """A line for the run's log: the autocast dtype and where float32 is kept."""
    if model.amp_dtype is None:
        return "float32"
    from ..models import amp_safe

    where = "stem, head, field" if amp_safe(model.block) else "stem, head (adaptive ODE block in float32)"
    return f"autocast {str(model.amp_dtype).removeprefix('torch.')} on {where}; state and logits in float32"
