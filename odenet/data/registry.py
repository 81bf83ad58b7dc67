"""The data set types (`Dataset`, `DataOptions`) and the one registry of loaders by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

TASKS = ("classification", "regression")


@dataclass
class Dataset:
    """A data set: float32 inputs ``(n, *input_shape)`` and int64 labels ``0..num_classes-1`` (classification)
    or float32 targets ``(n, num_classes)`` (``task="regression"``)."""

    name: str
    x_train: Tensor = field(repr=False)
    y_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    y_test: Tensor = field(repr=False)
    num_classes: int
    #: ``classification`` (int64 labels, cross-entropy) or ``regression`` (float32 targets ``(n, num_classes)``,
    #: mean squared error; ``num_classes`` is then the number of output features).
    task: str = "classification"
    #: an optional validation split held out from the training set (``Dataset.split_validation``)
    x_val: Tensor | None = field(default=None, repr=False)
    y_val: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"dataset {self.name!r}: task must be one of {list(TASKS)}, got {self.task!r}")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"dataset {self.name!r}: inputs and labels differ in length "
                f"(train {len(self.x_train)} vs {len(self.y_train)}, test {len(self.x_test)} vs {len(self.y_test)})"
            )

    def split_validation(self, fraction: float, seed: int) -> Dataset:
        """A copy with a seeded ``fraction`` of the training set moved to ``x_val`` / ``y_val``."""
        n = len(self.x_train)
        n_val = round(fraction * n)
        if not 1 <= n_val < n:
            raise ValueError(f"a validation fraction of {fraction} leaves {n_val} of {n} training examples for "
                             "validation: choose one that gives at least one example to each side")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
        val, train = perm[:n_val], perm[n_val:]
        return Dataset(self.name, self.x_train[train], self.y_train[train], self.x_test, self.y_test,
                       self.num_classes, self.task, self.x_train[val], self.y_train[val])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(2,)`` or ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])

    def __str__(self) -> str:
        return (
            f"Dataset({self.name!r}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


@dataclass(frozen=True)
class DataOptions:
    """The options every loader receives; each uses those that apply to it (see its docstring)."""

    root: str | os.PathLike[str] | None = None
    n_train: int | None = None  # None: the data set's default size
    n_test: int | None = None
    seed: int = 0
    dim: int = 2
    noise: float | None = None  # None: the data set's default noise
    as_images: bool = False
    synthetic: bool = False  # mnist / cifar10: synthetic images of the real shape instead of the files


Loader = Callable[[DataOptions], Dataset]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader to ``DATASETS`` under ``name``.

    A loader takes a :class:`DataOptions` (using the options that apply) and returns a :class:`Dataset`.
    """

    def decorator(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    dim: int = 2,
    noise: float | None = None,
    as_images: bool = False,
    synthetic: bool = False,
) -> Dataset:
    """The data set ``name`` (see ``DATASETS``); ``None`` sizes and noise mean the data set's default."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; data.name must be one of {sorted(DATASETS)}")
    return DATASETS[name](
        DataOptions(
            root=root, n_train=n_train, n_test=n_test, seed=seed, dim=dim, noise=noise, as_images=as_images,
            synthetic=synthetic,
        )
    )


# The loader modules register their loaders on import; they import the names above from this partly
# initialised package, hence the imports at the end.
