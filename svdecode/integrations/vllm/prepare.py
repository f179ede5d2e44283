"""The model folder vLLM loads for a steered model: the base's config and weights, plus svdecode's.

vLLM picks a model class by ``config.json``'s ``architectures``. The folder written here is the
base model's folder (weights and tokenizer linked, not copied) with ``architectures`` set to the
steered class and an ``svdecode`` entry holding the adapter folder and the served steering
settings; the class (:mod:`svdecode.integrations.vllm.model`) reads both at start-up. Written to a
temporary folder and renamed, under ``cache_dir()/vllm/<hash>``, so a second start reuses it.
Needs no vLLM.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from svdecode.errors import ModelLoadError
from svdecode.integrations.vllm.lora import read_config
from svdecode.model.config import CONFIG_NAME, SteeringConfig
from svdecode.model.loading import cache_dir, resolve_model_path

ARCHITECTURES = {"LlamaForCausalLM": "SVDecodeSteeredLlamaForCausalLM"}
SKIP = {"config.json", "svdecode_source.json"}


def steering_settings(adapter_dir: Path, mu: float | None = None, alpha: float | None = None) -> dict[str, Any]:
    """The served settings: ``steering_config.json``'s (mu = 0 for a plain adapter), overridden."""
    cfg = SteeringConfig.load(adapter_dir) if (adapter_dir / CONFIG_NAME).is_file() else SteeringConfig()
    cfg.override(mu=mu, alpha=alpha)
    return cfg.steerer.to_json()


def base_folder(adapter_dir: Path, base: str | None) -> Path:
    name = base or read_config(adapter_dir).get("base_model_name_or_path") or "default"
    path = Path(resolve_model_path(name))
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the base model {name!r} is no local folder with config.json (vLLM loads it offline)")
    return path


def prepare(
    adapter_dir: str | Path, base: str | None = None, mu: float | None = None, alpha: float | None = None
) -> Path:
    """A folder for ``vllm.LLM(model=...)`` that serves ``adapter_dir`` steered (see module doc)."""
    adapter_dir = Path(adapter_dir).resolve()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json)")
    src = base_folder(adapter_dir, base)
    config = json.loads((src / "config.json").read_text())
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise ModelLoadError(f"the vLLM engine steers {', '.join(ARCHITECTURES)} models; {src} is {archs}")
    config["architectures"] = [ARCHITECTURES[archs[0]]]
    config["svdecode"] = {"adapter": str(adapter_dir), **steering_settings(adapter_dir, mu, alpha)}
    text = json.dumps(config, indent=2, sort_keys=True)
    key = hashlib.sha256(f"{src.resolve()}\n{text}".encode()).hexdigest()[:16]
    target = cache_dir() / "vllm" / key
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        for item in src.iterdir():
            if item.name not in SKIP:
                (out / item.name).symlink_to(item.resolve())
        # The adapter's tokenizer (saved with it) wins over the base's, as in SteeredModel.
        for item in adapter_dir.glob("tokenizer*"):
            (out / item.name).unlink(missing_ok=True)
            (out / item.name).symlink_to(item.resolve())
        (out / "config.json").write_text(text)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target
