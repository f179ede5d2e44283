"""Small file helpers shared by the library and the harness: atomic writes and JSON that round-trips.

A crash during a write leaves either the old file or the new one, never half of one; ``jsonable``
turns numpy/torch scalars, tuples, paths and non-finite floats into standard JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented standard JSON (no NaN/Infinity literals), atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def jsonable(obj: Any) -> Any:
    """Standard-JSON version of ``obj``: non-finite floats become "inf"/"-inf"/"nan", numpy and
    torch scalars become Python numbers, tuples become lists."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf"))
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    raise TypeError(f"cannot store {type(obj).__name__} in results JSON")


def short_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj``'s canonical JSON: a stable cache/fingerprint key."""
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def slug(name: str) -> str:
    """``name`` safe as a file name (method names such as "alpha=0.2" or "peft[beam4]")."""
    return re.sub(r"[^A-Za-z0-9.+=_-]", "_", name)


def read_json_file(path: str | Path, what: str) -> Any:
    """The JSON in ``path``, with errors that name the file (``what`` says what it should be)."""
    from svdecode.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
