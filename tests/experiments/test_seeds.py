"""Recorded experiments sweep at least three training seeds, none of them a seed their hyper-parameters were chosen
on (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf" / "experiment"
#: experiment -> seeds its hyper-parameters were chosen or checked on (never reported)
TUNING_SEEDS = {"gradient_flow": set(), "loss_landscape": set(), "depth_smoothness": set(),
                "regularization": {0, 100}}  # penalty weights: first pilot on seed 0, chosen on seed 100


def swept_seeds(name: str) -> list[int]:
    """The training seeds of an experiment: its sweep's ``seed`` values (``hydra.sweeper.params.seed``, default 0),
    each extended to ``seed, seed + 1, ..., seed + K - 1`` by ``trainer.ensemble: K``."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    starts = [int(s) for s in str(cfg.hydra.sweeper.params.get("seed", cfg.get("seed", 0))).split(",")]
    k = int(OmegaConf.select(cfg, "trainer.ensemble", default=1) or 1)
    return [s + i for s in starts for i in range(k)]


def test_swept_seeds_reads_the_list_and_the_ensemble():
    assert swept_seeds("regularization") == [1, 2, 3]
    assert swept_seeds("depth_smoothness") == [0, 1, 2]  # one seed swept, trainer.ensemble: 3


@pytest.mark.parametrize("name", sorted(TUNING_SEEDS))
def test_at_least_three_seeds_none_used_for_tuning(name: str):
    seeds = swept_seeds(name)
    assert len(set(seeds)) >= 3
    assert not set(seeds) & TUNING_SEEDS[name]
