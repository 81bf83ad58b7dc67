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
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..models import Classifier
from .ranges import THREADS_AUTO

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


def resolve_threads(setting: Any) -> int | None:
    """The intra-op thread count of the config's ``threads``: ``auto`` is 1, ``N`` is N, null is None (torch's
    default, one per core, left as it is).

    Why ``auto`` is 1: odenet's models (MLP fields of 32-256 units, small conv nets, batches of 128) give each op
    microseconds of work, less than it costs OpenMP to wake and join a second thread; on shared cores the
    threads spin-wait on each other and an iteration can be 1.6-62x slower than with one (issue 13). A sweep
    runs jobs in parallel (the joblib launcher) instead; give ``threads=N`` to a large model on cores of its own.
    """
    if setting is None:
        return None
    if setting == THREADS_AUTO:
        return 1
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or setting != int(setting) or setting < 1:
        raise ValueError(f"threads must be auto, null or an integer >= 1, got {setting!r}")
    return int(setting)  # 2.0 passes the range check (an integral value): the same as 2


def apply_threads(setting: Any) -> int:
    """Set torch's intra-op threads as ``threads`` says (see :func:`resolve_threads`); returns the count in use."""
    n = resolve_threads(setting)
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


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


#: Graphs the compiler may keep per code object (torch's default is 8): a run's evaluations compile one graph per
#: ``with_solver`` block (solver, steps), mode and grad mode, past which torch would fall back to eager.
RECOMPILE_LIMIT = 64


def compile_block(model: Classifier) -> bool:
    """``trainer.compile``: ``torch.compile`` the block's whole solve in place (``Block.compile``; the state_dict
    keys stay, so checkpoints load into eager models); the blocks ``with_solver`` makes from it are compiled too.

    The training loop compiles its forward + loss on top (:func:`compiled_training_loss`). Returns whether the
    block was compiled. An ``ODEBlock`` is left eager (logged): torchdiffeq's loop branches
    on tensor values, and compiling its field alone made a step 1.3-1.4x slower (issue 13). On CPU the compiler
    needs a C++ toolchain (gcc); the first call of each graph is slow (seconds: compilation).
    """
    block = model.block
    if not hasattr(nn.Module, "compile"):
        raise ValueError(f"trainer.compile=true needs torch >= 2.2 (nn.Module.compile); this is {torch.__version__}")
    if not block.compilable:
        log.warning("trainer.compile: %s is left eager (torchdiffeq's solver loop cannot be compiled whole)",
                    type(block).__name__)
        return False
    _raise_recompile_limit()
    block.compile()
    return True


#: ``torch.compile``'s arguments for a training step's forward + loss (``benchmarks/step.py`` chose them: one graph,
#: static shapes, and inductor's ``cpp_wrapper``, which calls the graph's kernels from C++ rather than Python: 0.59x
#: -> 0.47x of the eager hand loop on the small field, for a longer first compile).
TRAINING_COMPILE: dict[str, Any] = {"fullgraph": True, "dynamic": False, "options": {"cpp_wrapper": True}}


def _raise_recompile_limit() -> None:
    from torch._dynamo import config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def compiled_training_loss(fn: Any, *args: Any) -> Any:
    """``trainer.compile``'s training forward: ``(x, y) -> fn(x, y, *args)`` (forward and loss) compiled as one
    graph with :data:`TRAINING_COMPILE`, so that AOTAutograd compiles its backward with it. Used by the training
    loop (forward, loss) and by an ensemble (its batched forward, per-member losses)."""
    _raise_recompile_limit()

    def training_loss(x: Tensor, y: Tensor) -> Any:
        return fn(x, y, *args)

    return torch.compile(training_loss, **TRAINING_COMPILE)


def fused_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``trainer.compile``: an ``Adam`` rebuilt with ``fused=True`` (one kernel per step; 0.47x -> 0.43x of the hand
    loop in ``benchmarks/step.py``), the same groups and hyper-parameters; other optimisers as they are."""
    if type(optimizer) is not torch.optim.Adam or optimizer.state:
        return optimizer
    drop = ("fused", "foreach", "params")
    groups = [{"params": g["params"], **{k: v for k, v in g.items() if k not in drop}} for g in optimizer.param_groups]
    try:
        return torch.optim.Adam(groups, **{k: v for k, v in optimizer.defaults.items() if k not in drop}, fused=True)
    except RuntimeError:  # a device or dtype fused Adam does not support: the optimiser as it was
        return optimizer


IMPLEMENTATION_FLAGS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)`` keeping ``optimizer``'s own ``fused`` / ``foreach`` per group.

    ``load_state_dict`` replaces the param groups with the saved ones, flags included: a ``trainer.compile=true``
    checkpoint resumed with ``compile=false`` would go on stepping fused Adam (and the reverse drop it). The flags are
    put into the saved groups before loading, so the state (Adam's ``step``) is also cast for the kernel that runs."""
    groups = [{**saved, **{k: own[k] for k in IMPLEMENTATION_FLAGS if k in own}}
              for saved, own in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def describe_precision(model: Classifier) -> str:
    """A line for the run's log: the autocast dtype and where float32 is kept."""
    if model.amp_dtype is None:
        return "float32"
    from ..models import amp_safe

    where = "stem, head, field" if amp_safe(model.block) else "stem, head (adaptive ODE block in float32)"
    return f"autocast {str(model.amp_dtype).removeprefix('torch.')} on {where}; state and logits in float32"
