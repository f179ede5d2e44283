"""vLLM plugin (entry point ``vllm.general_plugins``): registers the steered model class in every
vLLM process, including the workers it spawns."""

from __future__ import annotations

ARCH = "SVDecodeSteeredLlamaForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, f"svdecode.integrations.vllm.model:{ARCH}")
