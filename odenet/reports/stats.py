"""Statistics over seeds and the keys that group rows: which trained model, which evaluation, which integrator.

Fixed-step or adaptive is the :class:`~odenet.integrator.Integrator`'s answer (:func:`eval_integrator`,
:func:`train_integrator`); nothing here re-derives it from missing step counts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..integrator import Integrator
from .collect import BASE_COLUMNS, Row, columns, natural_key


@dataclass(frozen=True)
class Stats:
    """Summary of one metric over seeds."""

    mean: float
    std: float | None  # sample std; None for a single value
    lo: float
    hi: float
    n: int


def stats(values: Iterable[float | None]) -> Stats | None:
    """Mean, sample std, min and max of the finite values (``None`` if there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Stats(statistics.fmean(vals), std, min(vals), max(vals), len(vals))


def mean_std(values: Iterable[float | None], fmt: str = "{:.4f}") -> str:
    """``"mean ± std"`` of the finite values in ``fmt`` (one value alone, ``–`` if none); the std drops a ``+`` sign."""
    s = stats(values)
    if s is None:
        return "–"
    if s.std is None:
        return fmt.format(s.mean)
    return f"{fmt.format(s.mean)} ± {fmt.replace('+', '').format(s.std)}"


# ----------------------------------------------------------------------------------------------
# Ordering and grouping


def sort_value(value: Any) -> tuple[int, Any]:
    """Orders None last and keeps numbers and strings apart."""
    if value is None:
        return (2, "")
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, natural_key(str(value)))


def sort_key(key: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """Sort key of a tuple of values (nested tuples sort after plain values)."""
    return tuple(sort_value(v) if not isinstance(v, tuple) else (3, sort_key(v)) for v in key)


def group(rows: Iterable[Row], key: Callable[[Row], Hashable]) -> dict[Hashable, list[Row]]:
    """``rows`` grouped by ``key(row)``, groups and rows in first-appearance order."""
    groups: dict[Hashable, list[Row]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def _is_seed_key(key: str) -> bool:
    return "seed" in key.rsplit(".", 1)[-1].lower()


def setting_keys(rows: Sequence[Row]) -> list[str]:
    """Swept settings that tell trained models apart beyond the training solver and step.

    Override keys, except seeds and keys fixed by (train_solver, train_steps, train_step_size)
    such as ``solver.steps``.
    """
    keys = [c for c in columns(rows) if c not in BASE_COLUMNS and not _is_seed_key(c)]
    kept = []
    for k in keys:
        seen: dict[tuple[Any, ...], set[Any]] = {}
        for r in rows:
            if r["train_solver"] is None:  # a failed run that never reported its training config
                continue
            seen.setdefault((r["train_solver"], r["train_steps"], r["train_step_size"]), set()).add(r[k])
        if any(len(v) > 1 for v in seen.values()):
            kept.append(k)
    return kept


def model_key(row: Row, settings: Sequence[str]) -> tuple[Any, ...]:
    """Identifies a trained model configuration (everything but the seed)."""
    return (row["train_solver"], row["train_steps"], row["train_step_size"], tuple(row[k] for k in settings))


def eval_key(row: Row) -> tuple[Any, ...]:
    """Identifies a test evaluation."""
    return (row["test_solver"], row["test_steps"], row["test_step_size"], row["rtol"], row["atol"])


# ----------------------------------------------------------------------------------------------
# Integrators of a row


def eval_integrator(row: Row) -> Integrator | None:
    """The row's test integrator (None for a run that failed before any evaluation)."""
    return Integrator.from_record(row["test_solver"], row["test_steps"], row["test_step_size"], row["rtol"],
                                  row["atol"])


def train_integrator(row: Row) -> Integrator | None:
    """The integrator the row's model was trained with (None when the run never reported it)."""
    return Integrator.from_record(row["train_solver"], row["train_steps"], row["train_step_size"])


def adaptive_eval(row: Row) -> bool:
    """The row's evaluation used an error-controlled solver."""
    integrator = eval_integrator(row)
    return integrator is not None and integrator.adaptive


def adaptive_train(row: Row) -> bool:
    """The row's model was trained through an error-controlled solver."""
    integrator = train_integrator(row)
    return integrator is not None and integrator.adaptive


def at_train_step(row: Row) -> bool:
    """Evaluated at the training step size (or with the training solver itself)."""
    if row["is_train_solver"]:
        return True
    if row["test_step_size"] is not None and row["train_step_size"] is not None:
        return math.isclose(row["test_step_size"], row["train_step_size"], rel_tol=1e-9)
    return row["test_steps"] is not None and row["test_steps"] == row["train_steps"]


def matched_series(row: Row) -> tuple[str, str]:
    """Column / line of a row among the evaluations at the training step size: (kind, label)."""
    if adaptive_eval(row):
        tol = f", rtol={row['rtol']:g}" if row["rtol"] is not None else ""
        return ("adaptive", f"{row['test_solver']} (adaptive{tol})")
    return ("fixed", str(row["test_solver"]))


def ok(row: Row, metric: str = "accuracy") -> bool:
    """An ok evaluation with a value for ``metric``."""
    return row["status"] == "ok" and row["test_solver"] is not None and row[metric] is not None


# ----------------------------------------------------------------------------------------------
# Paired comparisons


def paired(a: Mapping[Hashable, float | None], b: Mapping[Hashable, float | None]) -> list[float]:
    """``a[s] - b[s]`` for every key ``s`` (a seed) both have with a finite value, in ``a``'s order."""
    out = []
    for s, x in a.items():
        y = b.get(s)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y)):
            out.append(float(x) - float(y))
    return out


def paired_text(diffs: Sequence[float], fmt: str = "{:+.4f}") -> str:
    """``"mean ± std (k of n > 0)"`` of paired differences (``–`` if there are none)."""
    if not diffs:
        return "–"
    above = sum(d > 0 for d in diffs)
    return f"{mean_std(diffs, fmt)} ({above} of {len(diffs)} > 0)"
