"""Which base model an adapter belongs to: architecture numbers plus a probe of the embedding
weights, equal for the same weights whatever the path or dtype they were loaded with.

The warm-start records the fingerprint of its base; loading the adapter onto a base compares it, so
an adapter never lands silently on another model of the same shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdecode.errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORCE_HINT = "load it onto the base model it was trained from, or pass --force (force=True) to load it anyway"


class BaseMismatchError(ModelLoadError):
    """An adapter and a base model it was not trained on."""


def vocab_size(model: torch.nn.Module) -> int:
    """Rows of the output layer (the logits' width), or of the input embeddings without one."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is None:
        emb = model.get_input_embeddings()
    return int(emb.weight.shape[0])


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Architecture numbers plus the L1 norms of 16 input-embedding rows: equal for the same
    weights whatever the path or dtype they were loaded with, different for another model."""
    import torch

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


def compare_fingerprints(
    recorded: dict[str, Any],
    model: torch.nn.Module,
    what: str,
    error: type[Exception] = BaseMismatchError,
    hint: str = FORCE_HINT,
) -> None:
    """Raise ``error`` when ``model`` is not the base ``recorded`` describes. Embedding probes may
    differ by 1e-3 (relative): half-precision loading rounds them."""
    now = base_fingerprint(model)
    for key in ("vocab_size", "model_type", "hidden_size", "num_hidden_layers"):
        if recorded.get(key) is not None and recorded.get(key) != now[key]:
            raise error(
                f"{what} was trained on a base model with {key}={recorded[key]!r}, but the given model has "
                f"{key}={now[key]!r}; {hint}"
            )
    old, new = recorded.get("embedding_probe"), now["embedding_probe"]
    if old and len(old) == len(new):
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(old, new, strict=True))
        if worst > 1e-3:
            raise error(
                f"{what} was trained on a base model with other weights than the given one (same "
                f"architecture, embedding rows differ by {worst:.2%}); {hint}"
            )


def recorded_fingerprint(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The base fingerprint the warm-start recorded beside the adapter: in the run manifest, or in
    ``warmstart.json`` of folders written before manifests; None for a plain peft folder."""
    from svdecode.runs.rundir import stage_entry

    entry = stage_entry(adapter_dir, "warmstart")
    if entry is not None and isinstance(entry.get("base_fingerprint"), dict):
        return entry["base_fingerprint"]
    legacy = Path(adapter_dir) / "warmstart.json"
    if legacy.is_file():
        try:
            fp = json.loads(legacy.read_text()).get("base_fingerprint")
        except (json.JSONDecodeError, AttributeError) as err:
            raise ModelLoadError(f"{legacy} is corrupt: {err}") from err
        return fp if isinstance(fp, dict) else None
    return None
