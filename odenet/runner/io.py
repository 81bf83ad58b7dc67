"""Files written so that a crash never leaves half of one: a temp file in the same folder, then a rename."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings (``[]`` when the file is missing or unreadable)."""
    try:
        with Path(path).open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, allow_nan=True))


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` atomically (``None`` as an empty field); columns in first-appearance order unless given."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)
    return path
