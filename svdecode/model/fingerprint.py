"""Which base model an adapter belongs to: architecture numbers, a probe of the embedding weights
and hashes of a strided sample of every weight tensor, equal for the same weights whatever the
path or dtype they were loaded with.

The warm-start records the fingerprint of its base; loading the adapter onto a base compares it, so
an adapter never lands silently on another model of the same shape.
"""

from __future__ import annotations

import copy
import hashlib
import json
import weakref
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


# Version 2 adds "weights": a strided sample of every parameter tensor, hashed. Fingerprints
# without it (version 1, written before) are compared on the architecture and embedding probe only.
FINGERPRINT_VERSION = 2
SAMPLE = 1024  # elements sampled (evenly strided) from each tensor: microseconds per tensor
# Precisions the sample is hashed at: a base loaded in another dtype than the one it was
# fingerprinted in is compared at the coarser of the two (fp32 -> bf16 is exactly what loading in
# bf16 does, so the hashes agree bit for bit).
PRECISIONS = ("float32", "bfloat16", "float16")
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Architecture numbers, the L1 norms of 16 input-embedding rows, and hashes of a strided
    sample of every weight tensor: equal for the same weights whatever the path or dtype they
    were loaded with, different for another model -- also one that differs only in some layers.
    Cached per model object until one of its parameters changes in place."""
    import torch

    params = list(model.named_parameters())
    key = tuple((name, p.data_ptr(), p._version) for name, p in params)
    cached = _cache.get(model)
    if cached is not None and cached[0] == key:
        return copy.deepcopy(cached[1])
    mc = model.config
    emb = model.get_input_embeddings().weight
    rows = torch.linspace(0, emb.shape[0] - 1, steps=min(16, emb.shape[0])).long()
    with torch.no_grad():
        probe = emb[rows.to(emb.device)].detach().double().abs().sum(dim=1).cpu().tolist()
    fp = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "model_type": getattr(mc, "model_type", None),
        "vocab_size": vocab_size(model),
        "hidden_size": getattr(mc, "hidden_size", None),
        "num_hidden_layers": getattr(mc, "num_hidden_layers", None),
        "embedding_probe": [round(x, 6) for x in probe],
        "weights": _weights_fingerprint(params),
    }
    _cache[model] = (key, fp)
    return copy.deepcopy(fp)


def _sample(p: torch.Tensor) -> torch.Tensor:
    flat = p.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    return flat[::step][:SAMPLE].cpu()


def _digest(samples: list[torch.Tensor], precision: str) -> str:
    import torch

    h = hashlib.sha256()
    for x in samples:
        h.update(x.to(getattr(torch, precision)).view(torch.int16 if precision != "float32" else torch.int32)
                 .numpy().tobytes())  # fmt: skip
    return h.hexdigest()[:16]


def _weights_fingerprint(params: list[tuple[str, torch.Tensor]]) -> dict[str, Any] | None:
    """Per-tensor hashes of a strided sample at each precision, plus one hash over all of them;
    None for weights that are not floating point (quantised), which only the probe covers."""
    import torch

    if not params or not all(p.is_floating_point() for _, p in params):
        return None
    dtype = str(params[0][1].dtype).removeprefix("torch.")
    with torch.no_grad():
        samples = {name: _sample(p) for name, p in params}
    return {
        "dtype": dtype if dtype in PRECISIONS else "float32",
        "sample": SAMPLE,
        "all": {prec: _digest(list(samples.values()), prec) for prec in PRECISIONS},
        "tensors": {name: _digest([x], _coarsest(dtype)) for name, x in samples.items()},
    }


def _coarsest(dtype: str) -> str:
    return dtype if dtype in PRECISIONS else "float32"


def _weights_mismatch(old: dict[str, Any], new: dict[str, Any] | None) -> str | None:
    """Which weights differ between two "weights" records (None when they agree, or when they
    cannot be compared: quantised now, or bf16 against fp16, where rounding differs)."""
    if new is None or old.get("sample") != new.get("sample"):
        return None
    a, b = old.get("dtype"), new.get("dtype")
    if a == b or a == "float32":
        prec = b
    elif b == "float32":
        prec = a
    else:
        return None
    if old["all"].get(prec) == new["all"].get(prec):
        return None
    if set(old["tensors"]) != set(new["tensors"]):
        missing = sorted(set(old["tensors"]) ^ set(new["tensors"]))
        return f"other weight tensors ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"
    if a == b:
        names = [n for n in old["tensors"] if old["tensors"][n] != new["tensors"][n]]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return f"other values in {len(names)} weight tensor(s): {shown}"
    return "other weight values"


def compare_fingerprints(
    recorded: dict[str, Any],
    model: torch.nn.Module,
    what: str,
    error: type[Exception] = BaseMismatchError,
    hint: str = FORCE_HINT,
) -> None:
    """Raise ``error`` when ``model`` is not the base ``recorded`` describes. Embedding probes may
    differ by 1e-3 (relative): half-precision loading rounds them. Weight hashes (fingerprint
    version 2) are compared at the coarser precision of the two loads."""
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
    if isinstance(recorded.get("weights"), dict):
        differ = _weights_mismatch(recorded["weights"], now["weights"])
        if differ:
            raise error(
                f"{what} was trained on a base model with other weights than the given one (same "
                f"architecture and embeddings, {differ}); {hint}"
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
