"""The same experiment under two protocols side by side (Ott et al.'s published one and ours): the comparison tables
of odenet.reports.step_size_ablation and odenet.reports.step_adaptation on tiny synthetic summary.csv files."""

from __future__ import annotations

import csv
from pathlib import Path

from odenet.reports.step_adaptation import load_adapted, load_grid
from odenet.reports.step_adaptation import protocol_comparison as adapted_comparison
from odenet.reports.step_size_ablation import protocol_comparison as grid_comparison

COLUMNS = ["experiment", "train_solver", "train_steps", "train_step_size", "test_solver", "test_steps",
           "test_step_size", "rtol", "atol", "is_train_solver", "accuracy", "loss", "nfe", "seed", "status"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with (path / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({"status": "ok", "loss": 0.1, **r})
    return path


def _fixed(n: int, seed: int, train: float, dopri5: float, midpoint: float = 0.0) -> list[dict]:
    base = dict(train_solver="euler", train_steps=n, train_step_size=1 / n, seed=seed)
    return [
        {**base, "test_solver": "euler", "test_steps": n, "is_train_solver": True, "accuracy": train, "nfe": n},
        {**base, "test_solver": "midpoint", "test_steps": n, "is_train_solver": False, "accuracy": midpoint},
        {**base, "test_solver": "midpoint", "test_steps": 2 * n, "is_train_solver": False, "accuracy": 0.123},
        {**base, "test_solver": "dopri5", "rtol": 1e-6, "is_train_solver": False, "accuracy": dopri5, "nfe": 99},
    ]


def test_load_grid_keeps_the_dopri5_reference_per_seed(tmp_path):
    sweep = _write(tmp_path / "a", [*_fixed(2, 0, 1.0, 0.5, 0.6), *_fixed(2, 1, 1.0, 0.7)])
    grid = load_grid(sweep)
    assert grid[2]["train"] == {"0": 1.0, "1": 1.0} and grid[2]["dopri5"] == {"0": 0.5, "1": 0.7}
    assert grid[2]["midpoint"] == {"0": 0.6, "1": 0.0}  # at the training N only, not at 2N


def test_grid_comparison_by_hand(tmp_path):
    a = _write(tmp_path / "a", [*_fixed(2, 0, 1.0, 0.5), *_fixed(2, 1, 1.0, 0.7)])
    b = _write(tmp_path / "b", [*_fixed(2, 0, 0.9, 0.9), *_fixed(4, 0, 0.8, 0.75), *_fixed(4, 1, 0.6, 0.65)])
    lines = grid_comparison({"theirs": a, "ours": b / "summary.csv"})
    assert lines[0] == ("| h (N) | theirs: training solver | theirs: dopri5 | theirs: change (points) | ours: training "
                        "solver | ours: dopri5 | ours: change (points) |")
    # theirs N=2: train 100 ± 0, dopri5 (50, 70) -> 60.0 ± 14.1, paired change (-50, -30) -> -40.0 ± 14.1
    assert lines[2] == "| h = 1/2 (2) | 100.0 ± 0.0 | 60.0 ± 14.1 | -40.0 ± 14.1 | 90.0 | 90.0 | 0.0 |"
    # N=4 only in ours: train (80, 60) -> 70.0 ± 14.1, dopri5 (75, 65) -> 70.0 ± 7.1, change (-5, +5) -> 0.0 ± 7.1
    assert lines[3] == "| h = 1/4 (4) | – | – | – | 70.0 ± 14.1 | 70.0 ± 7.1 | 0.0 ± 7.1 |"


def _adapted(seed: int, h: float, snapped: int | None, train: float, dopri5: float) -> list[dict]:
    base = dict(train_solver="euler", train_steps=snapped, train_step_size=h, seed=seed)
    nfe = snapped or 4
    return [
        {**base, "test_solver": "euler", "test_steps": snapped, "test_step_size": h, "is_train_solver": True,
         "accuracy": train, "nfe": nfe},
        {**base, "test_solver": "dopri5", "rtol": 1e-6, "is_train_solver": False, "accuracy": dopri5, "nfe": 50},
    ]


def test_adapted_comparison_by_hand(tmp_path):
    # seed 0 ends at h = 0.25 (4 steps), seed 1 at h = T = 1, snapped to N = 1 (train_steps 1)
    sweep = _write(tmp_path / "s", [*_adapted(0, 0.25, None, 0.9, 0.8), *_adapted(1, 1.0, 1, 0.7, 0.7)])
    runs = load_adapted(sweep)
    assert runs == {"0": {"train": 0.9, "h": 0.25, "nfe": 4.0, "dopri5": 0.8},
                    "1": {"train": 0.7, "h": 1.0, "nfe": 1.0, "dopri5": 0.7}}
    lines = adapted_comparison({"theirs": sweep})
    # h (0.25, 1) -> 0.6250 ± 0.5303; NFE (4, 1) -> 2.5 ± 2.1; train (90, 70) -> 80.0 ± 14.1;
    # dopri5 (80, 70) -> 75.0 ± 7.1; paired change (-10, 0) -> -5.0 ± 7.1
    assert lines[2] == "| theirs | 2 | 0.6250 ± 0.5303 | 2.5 ± 2.1 | 80.0 ± 14.1 | 75.0 ± 7.1 | -5.0 ± 7.1 |"


def test_grid_comparison_uses_the_complete_seeds_and_the_recorded_step_size(tmp_path):
    # seed 1 has no dopri5 evaluation: the means leave it out (train 100 only, not (100 + 0) / 2)
    rows = [*_fixed(2, 0, 1.0, 0.5), *[r for r in _fixed(2, 1, 0.0, 0.7) if r["test_solver"] != "dopri5"]]
    rows = [{**r, "train_step_size": 0.25} for r in rows]  # h recorded as 1/4 at N = 2 (T = 0.5)
    lines = grid_comparison({"a": _write(tmp_path / "a", rows)})
    assert lines[2] == "| h = 1/4 (2) | 100.0 | 50.0 | -50.0 |"


def test_load_grid_keeps_the_tightest_dopri5_tolerance(tmp_path):
    loose = {**_fixed(2, 0, 1.0, 0.5)[3], "rtol": 1e-3, "accuracy": 0.2}
    for i, rows in enumerate(([*_fixed(2, 0, 1.0, 0.5), loose], [loose, *_fixed(2, 0, 1.0, 0.5)])):  # either order
        assert load_grid(_write(tmp_path / f"order{i}", rows))[2]["dopri5"] == {"0": 0.5}


def test_adapted_comparison_counts_complete_seeds_only(tmp_path):
    # seed 1 lacks dopri5 and records no step size and no N: it is left out of every column, without a crash
    seed1 = [{**r, "train_step_size": None} for r in _adapted(1, 1.0, None, 0.1, 0.7) if r["test_solver"] != "dopri5"]
    sweep = _write(tmp_path / "s", [*_adapted(0, 0.25, None, 0.9, 0.8), *seed1])
    lines = adapted_comparison({"theirs": sweep})
    assert lines[2] == "| theirs | 1 | 0.2500 | 4.0 | 90.0 | 80.0 | -10.0 |"
