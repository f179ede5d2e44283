"""The steered model as a vLLM model class: two decoder passes, steered logits.

``SVDecodeSteeredLlamaForCausalLM`` holds two vLLM ``LlamaForCausalLM`` decoders built from the
same checkpoint: ``adapted`` with the LoRA adapter merged into its weights, ``base`` without. Each
has its own attention layers (distinct prefixes), so vLLM allocates and pages a KV cache for both
streams like for any other layer, in the same block tables: the scheduler, prefix caching,
continuous batching and sampling stay vLLM's own, and both streams always see the same tokens.
Weights the adapter does not touch are shared between the two decoders after loading.

``forward`` returns both streams' hidden states side by side (``[tokens, 2 * hidden]``) so that
vLLM's own row selection (``hidden_states[logits_indices]``) keeps them paired; ``compute_logits``
splits them, computes z_phi and z_theta with each decoder's head and returns the steered fp32
logits of the steering object (:mod:`svdecode.integrations.vllm.steer`), each row with its request's settings as
:class:`~svdecode.integrations.vllm.logits.RequestSteering` tracks them (the served ones without it).

Not supported: pipeline parallelism (the hidden-state pairing assumes one stage), quantized
checkpoints, vLLM's own LoRA (``enable_lora``) on this class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import maybe_prefix

from svdecode.integrations.vllm.logits import row_settings
from svdecode.integrations.vllm.lora import adapted_params, lora_deltas, merge_into
from svdecode.integrations.vllm.steer import combine_rows
from svdecode.steering import Steerer


class SVDecodeSteeredLlamaForCausalLM(nn.Module):
    """A Llama decoder run twice per step (adapted and base), returning steered logits."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        served = getattr(config, "svdecode", None)
        if not isinstance(served, dict) or "adapter" not in served:
            raise ValueError(
                "this model folder has no 'svdecode' entry in config.json; build it with "
                "svdecode.integrations.vllm.prepare(adapter_dir)"
            )
        self.adapter_dir = served["adapter"]
        self.settings = Steerer.from_json(served)
        self.adapted = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "adapted"))
        self.base = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "base"))
        self.make_empty_intermediate_tensors = self.adapted.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.adapted.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if intermediate_tensors is not None:
            raise NotImplementedError("the svdecode steered model does not support pipeline parallelism")
        h_phi = self.adapted(input_ids, positions, None, inputs_embeds)
        h_theta = self.base(input_ids, positions, None, inputs_embeds)
        return torch.cat([h_phi, h_theta], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        h_phi, h_theta = hidden_states.chunk(2, dim=-1)
        z_phi = self.adapted.compute_logits(h_phi)
        z_theta = self.base.compute_logits(h_theta)
        if z_phi is None:  # a tensor-parallel rank other than the one that samples
            return None
        return combine_rows(z_phi, z_theta, row_settings(z_phi.shape[0], self.settings))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        weights = list(weights)  # both decoders read the checkpoint (tensors are not copied)
        deltas = lora_deltas(self.adapter_dir)
        loaded = {f"adapted.{n}" for n in self.adapted.load_weights(merge_into(weights, deltas))}
        loaded |= {f"base.{n}" for n in self.base.load_weights(iter(weights))}
        self._share_unadapted(adapted_params(deltas))
        return loaded

    @torch.no_grad()
    def _share_unadapted(self, changed: set[str]) -> None:
        """Point the base decoder's weights that the adapter leaves alone at the adapted
        decoder's (the merged ones must stay separate: they differ)."""
        adapted = dict(self.adapted.named_parameters())
        for name, param in self.base.named_parameters():
            if name not in changed and name in adapted and adapted[name].shape == param.shape:
                param.data = adapted[name].data
