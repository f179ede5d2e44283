"""Which base model an adapter belongs to: architecture numbers plus a probe of the embedding
weights, equal for the same weights whatever the path or dtype they were loaded with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.train.config import AdapterMismatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Architecture numbers plus the L1 norms of 16 input-embedding rows: equal for the same
    weights whatever the path or dtype they were loaded with, different for another model."""
    import torch

    from svdecode.models import vocab_size  # lazy: keeps the CLI parser light

    mc = model.config
    emb = model.get_input_embeddings().weight
    rows = torch.linspace(0, emb.shape[0] - 1, steps=min(16, emb.shape[0])).long()
    with torch.no_grad():
        probe = emb[rows.to(emb.device)].detach().double().abs().sum(dim=1).cpu().tolist()
    return {
        "model_type": getattr(mc, "model_type", None),
        "vocab_size": vocab_size(model),
        "hidden_size": getattr(mc, "hidden_size", None),
        "num_hidden_layers": getattr(mc, "num_hidden_layers", None),
        "embedding_probe": [round(x, 6) for x in probe],
    }


def compare_fingerprints(recorded: dict[str, Any], model: torch.nn.Module, what: str) -> None:
    """Raise :class:`AdapterMismatchError` when ``model`` is not the base ``recorded`` describes."""
    now = base_fingerprint(model)
    for key in ("vocab_size", "model_type", "hidden_size", "num_hidden_layers"):
        if recorded.get(key) is not None and recorded.get(key) != now[key]:
            raise AdapterMismatchError(
                f"{what} was trained on a base model with {key}={recorded[key]!r}, but the given model has "
                f"{key}={now[key]!r}; load it onto the base model it was trained from"
            )
    old, new = recorded.get("embedding_probe"), now["embedding_probe"]
    if old and len(old) == len(new):
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(old, new, strict=True))
        if worst > 1e-3:
            raise AdapterMismatchError(
                f"{what} was trained on a base model with other weights than the given one (same "
                f"architecture, embedding rows differ by {worst:.2%}); load it onto the base model it was "
                "trained from, or pass strict=False if you mean to"
            )


def same_model_name(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True
    try:
        from svdecode.models import DEFAULT_ALIASES
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
