"""The runner's single validation step: every setting checked before anything is written."""

from __future__ import annotations

import pytest

from odenet.runner.config import load_config
from odenet.runner.validate import ConfigError, validate


def test_runner_refuses_bad_regularization_settings():
    with pytest.raises(ConfigError, match="regularization.kinetic must be a number >= 0"):
        validate(load_config(["regularization.kinetic=-1"]))
    with pytest.raises(ConfigError, match="regularization.noise"):
        validate(load_config(["regularization.jacobian=1", "regularization.noise=sobol"]))
    with pytest.raises(ConfigError, match="block=plain"):
        validate(load_config(["block=plain", "regularization.kinetic=1"]))
