"""A saved PEFT LoRA adapter as per-weight deltas, to merge into the adapted stream's weights.

The steered model in vLLM runs the decoder twice: once with the adapter merged into its weights
(W + s * B A) and once without. Merging happens on the checkpoint tensors as vLLM's weight loader
streams them (:func:`merge_into`), so vLLM's own loader still fuses q/k/v and gate/up and shards
them for tensor parallelism. Needs only torch and safetensors (no vLLM, no peft).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

from svdecode.errors import ModelLoadError

# Linear layers of a Llama-style decoder layer that a LoRA adapter may target here.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# vLLM fuses these checkpoint weights into one parameter.
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+\.(?P<target>\w+))\.lora_(?P<ab>[AB])\.weight$")


def read_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read the LoRA adapter config {path}: {err}") from err


def lora_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """``{checkpoint weight name: s * B @ A}`` (fp32) for every LoRA-adapted linear layer.

    Refused with a message naming the reason: adapters other than plain LoRA (DoRA, other peft
    types), targets outside :data:`TARGETS`, ``fan_in_fan_out`` and missing A/B halves.
    """
    adapter_dir = Path(adapter_dir)
    cfg = read_config(adapter_dir)
    kind = str(cfg.get("peft_type", "")).split(".")[-1]
    if kind != "LORA" or cfg.get("use_dora"):
        raise ModelLoadError(
            f"{adapter_dir}: the vLLM engine serves plain LoRA adapters; this one is "
            f"{'DoRA' if cfg.get('use_dora') else kind or 'of unknown type'} (use the default engine)"
        )
    if cfg.get("fan_in_fan_out"):
        raise ModelLoadError(f"{adapter_dir}: LoRA with fan_in_fan_out is not supported by the vLLM engine")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{adapter_dir} has no adapter_model.safetensors")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights)).items():
        m = _KEY.match(key)
        if m is None:
            raise ModelLoadError(f"{weights}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        if m["target"] not in TARGETS:
            raise ModelLoadError(
                f"{weights}: LoRA on {m['target']!r}; the vLLM engine merges LoRA into {', '.join(TARGETS)}"
            )
        halves.setdefault(m["module"], {})[m["ab"]] = tensor
    deltas = {}
    for module, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"{weights}: {module} has lora_{next(iter(ab))} without its other half")
        rank = ab["A"].shape[0]
        target = module.rsplit(".", 1)[-1]
        r = cfg.get("rank_pattern", {}).get(target, cfg["r"])
        lora_alpha = cfg.get("alpha_pattern", {}).get(target, cfg["lora_alpha"])
        if r != rank:
            raise ModelLoadError(f"{weights}: {module} has rank {rank}, the config says {r}")
        scale = lora_alpha / math.sqrt(r) if cfg.get("use_rslora") else lora_alpha / r
        deltas[f"{module}.weight"] = (ab["B"].float() @ ab["A"].float()) * scale
    if not deltas:
        raise ModelLoadError(f"{weights} holds no LoRA weights")
    return deltas


def merge_into(
    weights: Iterable[tuple[str, torch.Tensor]], deltas: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's (name, tensor) pairs with each delta added (in fp32, then back to the
    tensor's dtype); raises if a delta found no weight, so a misnamed adapter cannot go unmerged."""
    left = set(deltas)
    for name, tensor in weights:
        delta = deltas.get(name)
        if delta is not None:
            if delta.shape != tensor.shape:
                raise ModelLoadError(f"LoRA delta for {name} is {tuple(delta.shape)}, the weight {tuple(tensor.shape)}")
            tensor = (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)
            left.discard(name)
        yield name, tensor
    if left:
        raise ModelLoadError(f"the base checkpoint has no weight for LoRA target(s) {sorted(left)[:3]}")


def adapted_params(deltas: dict[str, torch.Tensor]) -> set[str]:
    """Names of the vLLM parameters a merge changes (fused names: ``...qkv_proj.weight``)."""
    out = set()
    for name in deltas:
        module, target = name.removesuffix(".weight").rsplit(".", 1)
        out.add(f"{module}.{FUSED.get(target, target)}.weight")
    return out
