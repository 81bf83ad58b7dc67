"""The runner's input error: one line naming the config key and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work: the message names the key and how to fix it."""


def check_choice(key: str, value: Any, valid: Sequence[str]) -> None:
    """A ConfigError naming the config key and listing the valid values."""
    if value not in valid:
        raise ConfigError(f"unknown {key}={value!r}; {key} must be one of {sorted(valid)}")
