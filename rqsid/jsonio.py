"""JSON of artifacts and reports: one conversion of numpy, pydantic and path values, and the two ways
files are written (plain, and atomically by rename for manifests that other processes read)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """A JSON type for the values the library produces; TypeError for anything else (version ids hash
    this, so an unexpected type must fail, not turn into a string that hides it)."""
    if hasattr(value, "model_dump"):  # pydantic config sections and results
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON")


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for reports and logs: what `to_jsonable` knows, else the value's str."""
    try:
        return to_jsonable(value)
    except TypeError:
        return str(value)


def write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    path = Path(path)
    path.write_text(json.dumps(value, indent=indent, default=json_default))
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write beside the target, then rename over it: a reader sees the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=to_jsonable))
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
