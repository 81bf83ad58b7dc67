"""``threads``: auto (one intra-op thread) by default, N forces N, null leaves torch's default; applied in every
run (joblib workers run ``train_and_evaluate`` too) and in the report's process; bad values refused at start."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from odenet.reports import ReportCallback
from odenet.runner.accel import apply_threads, resolve_threads
from odenet.runner.config import load_config, precheck
from odenet.runner.train import train_and_evaluate
from odenet.runner.validate import ConfigError, validate

SMOKE = ["+debug=smoke", "trainer.progress=false", "evaluation=none"]


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_resolve_threads_reads_auto_as_one_and_refuses_the_rest():
    assert resolve_threads("auto") == 1 and resolve_threads(3) == 3 and resolve_threads(None) is None
    assert resolve_threads(2.0) == 2 and isinstance(resolve_threads(2.0), int)  # passes the range check: accepted
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match="threads must be auto, null or an integer >= 1"):
            resolve_threads(bad)


def test_apply_threads_sets_torch_and_null_leaves_it(two_threads):
    assert apply_threads(None) == 2 == torch.get_num_threads()
    assert apply_threads("auto") == 1 == torch.get_num_threads()
    assert apply_threads(2) == 2 == torch.get_num_threads()


def test_the_default_is_auto_and_bad_values_are_one_line_errors():
    assert load_config([]).threads == "auto"
    validate(load_config([*SMOKE, "threads=3"]))
    validate(load_config([*SMOKE, "threads=null"]))
    for value in ("0", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"threads must be an integer >= 1 \(or null\), or auto"):
            validate(load_config([*SMOKE, f"threads={value}"]))
        assert "threads must be" in (precheck([f"threads={value}"]) or "")
    assert precheck(["threads=auto"]) is None


def test_a_run_applies_auto_and_records_it(tmp_path, two_threads):
    metrics = train_and_evaluate(load_config(SMOKE), tmp_path / "auto")
    assert metrics["threads"] == 1 == torch.get_num_threads()
    torch.set_num_threads(2)
    metrics = train_and_evaluate(load_config([*SMOKE, "threads=null"]), tmp_path / "null")
    assert metrics["threads"] == 2


def test_the_report_callback_applies_the_sweeps_threads(two_threads):
    callback = ReportCallback(plots="never")
    callback._write(OmegaConf.create({"threads": "auto"}))  # no sweep dir: nothing written, threads set
    assert torch.get_num_threads() == 1
