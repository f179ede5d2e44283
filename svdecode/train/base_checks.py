"""Whether a base model is the one an adapter or an interrupted warm-start recorded: base-model
names (aliases and paths of the same model) and the fingerprint comparison with the warm-start's
error type. The fingerprint itself is computed by :mod:`svdecode.model.fingerprint`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.model.fingerprint import compare_fingerprints as _compare
from svdecode.train.config import AdapterMismatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def compare_fingerprints(recorded: dict[str, Any], model: torch.nn.Module, what: str) -> None:
    """Raise :class:`AdapterMismatchError` when ``model`` is not the base ``recorded`` describes."""
    _compare(
        recorded,
        model,
        what,
        error=AdapterMismatchError,
        hint="load it onto the base model it was trained from, or pass strict=False (--force) if you mean to",
    )


def same_model_name(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True
    try:
        from svdecode.model.loading import DEFAULT_ALIASES
    except ImportError:  # pragma: no cover
        DEFAULT_ALIASES = {"default"}
    if a in DEFAULT_ALIASES and b in DEFAULT_ALIASES:
        return True
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def model_name(model: torch.nn.Module) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    return str(name) if name else None
