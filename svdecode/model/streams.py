"""Base and adapted logits for the same batch from one set of weights, with KV caches for both.

A :class:`LogitStreams` runs the adapted model phi and the base model theta on the same tokens and
returns both logit tensors. How it does so depends on the adapter:

* LoRA -- ONE forward pass over a doubled batch ``[x; x]`` with peft's mixed-adapter batches
  (``adapter_names=[adapter]*B + ["__base__"]*B``): one KV cache of batch 2B.
* IA3 and other weight adapters -- two passes, adapter on and off (``disable_adapter()``); IA3
  silently ignores ``adapter_names``, so it must never take the mixed path.
* Prompt Tuning, P-Tuning, Prefix Tuning -- two passes: the adapted stream carries the virtual
  tokens (in its inputs or its cache), the base stream is the frozen model without them.
* Two separate models (a base and a fully fine-tuned checkpoint) sharing a tokenizer.

Positions: a stream's position ids are derived from its own attention mask, so left padding is
handled; virtual tokens take positions 0..n-1 and shift the real tokens by n, as peft does.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from svdecode.model.kv_cache import StreamCache, new_cache
from svdecode.model.loading import ModelLoadError, check_same_vocabulary

log = logging.getLogger("svdecode")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


# -- transformers compatibility seam ------------------------------------------------------------
# transformers 5.24 renamed the cache of every model forward -- its argument, its output field and
# the name generate() passes it under -- from `past_key_values` to `cache` (5.23 and earlier:
# `past_key_values`). Everything in svdecode that hands a cache to a model or reads one back goes
# through CACHE_NAME / cache_kwargs / output_cache / take_cache; nothing else names it.
TESTED_TRANSFORMERS = ("5.23", "5.24")  # oldest and newest minor release the suite has passed on


class UnsupportedTransformersError(ModelLoadError):
    """The installed transformers does not behave as svdecode's cache handling expects."""


def unsupported_transformers(reason: str) -> UnsupportedTransformersError:
    lo, hi = TESTED_TRANSFORMERS
    return UnsupportedTransformersError(
        f"svdecode supports transformers {lo}-{hi}; found {transformers.__version__}: {reason}. "
        f"Install a supported version (e.g. pip install 'transformers>={lo},<{_next_minor(hi)}')."
    )


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _detect_cache_name() -> str:
    fields = getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
    for name in ("cache", "past_key_values"):  # 5.24+, then <= 5.23
        if name in fields:
            return name
    raise unsupported_transformers("its model outputs carry neither `cache` nor `past_key_values`")


CACHE_NAME = _detect_cache_name()


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """The keyword a model forward takes its KV cache under, in the installed transformers."""
    return {CACHE_NAME: cache}


def output_cache(outputs: Any) -> Any:
    """The KV cache a model forward returned."""
    return getattr(outputs, CACHE_NAME)


def take_cache(kwargs: dict[str, Any]) -> Any:
    """Pop the cache generate() passed to a forward, under either name (a user may still pass
    ``past_key_values=`` by hand on 5.24+)."""
    found = [kwargs.pop(name) for name in ("cache", "past_key_values") if kwargs.get(name) is not None]
    if len(found) > 1:
        raise ValueError("got both `cache` and `past_key_values`; pass one")
    kwargs.pop("cache", None)
    kwargs.pop("past_key_values", None)
    return found[0] if found else None


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: cumsum(mask) - 1, with 0 on padding."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)


class LogitStreams(ABC):
    """Computes (adapted, base) logits for one batch, optionally incrementally with a cache."""

    kind: str = ""

    @property
    @abstractmethod
    def config(self) -> PretrainedConfig: ...

    @property
    @abstractmethod
    def modules(self) -> list[torch.nn.Module]:
        """The nn.Modules whose weights the streams use (for device/dtype and registration)."""

    @abstractmethod
    def new_cache(self) -> StreamCache: ...

    @abstractmethod
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        cache: StreamCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(z_adapted, z_base)`` for ``input_ids`` (the new tokens only when ``cache`` holds
        the earlier ones). ``attention_mask`` covers the whole sequence so far, real tokens only.
        """

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.forward(*args, **kwargs)


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def contiguous_head_inputs(model: torch.nn.Module) -> None:
    """Give ``model``'s output layer contiguous inputs (idempotent; the values do not change).

    With ``logits_to_keep`` transformers hands the LM head a non-contiguous ``[B, 1, H]`` slice of
    the hidden states; on the CPU, torch 2.13's bf16/fp16 ``F.linear`` then expands the weight once
    per batch row (measured: +432 MiB for SmolLM2-135M's 49152x576 head at batch 8, none in fp32).
    Copying the B*H slice first avoids it; the doubled batch of steered decoding doubles the stakes.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_svdecode_contiguous", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._svdecode_contiguous = True


def _positions(attention_mask: torch.Tensor, n_new: int) -> torch.Tensor:
    return positions_from_mask(attention_mask)[:, -n_new:]


def _run(model, input_ids, attention_mask, cache, logits_to_keep, **kwargs) -> torch.Tensor:
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask, input_ids.shape[1]),
        use_cache=cache is not None,
        logits_to_keep=logits_to_keep,
        **cache_kwargs(cache),
        **kwargs,
    )
    return out.logits


class _PeftStreams(LogitStreams):
    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.adapter = peft_model.active_adapter
        contiguous_head_inputs(peft_model.get_base_model())

    @property
    def config(self) -> PretrainedConfig:
        return self.peft_model.get_base_model().config

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.peft_model]


class MixedBatchLoRAStreams(_PeftStreams):
    """LoRA: both distributions from one forward pass over ``[x; x]`` with mixed adapters."""

    kind = "lora-mixed-batch"

    def new_cache(self) -> StreamCache:
        return StreamCache([new_cache(self.peft_model.get_base_model())], joint=True)

    def forward(self, input_ids, attention_mask, cache=None, logits_to_keep=0):
        batch = input_ids.shape[0]
        logits = _run(
            self.peft_model,
            torch.cat([input_ids, input_ids]),
            torch.cat([attention_mask, attention_mask]),
            cache.caches[0] if cache is not None else None,
            logits_to_keep,
            adapter_names=[self.adapter] * batch + [BASE_ADAPTER] * batch,
        )
        return logits[:batch], logits[batch:]


class ToggleAdapterStreams(_PeftStreams):
    """Weight adapters without mixed batches (IA3, ...): adapter on, then off, two caches."""

    kind = "two-pass-adapter-toggle"

    def new_cache(self) -> StreamCache:
        base = self.peft_model.get_base_model()
        return StreamCache([new_cache(base), new_cache(base)], joint=False)

    def forward(self, input_ids, attention_mask, cache=None, logits_to_keep=0):
        caches = cache.caches if cache is not None else [None, None]
        z_phi = _run(self.peft_model, input_ids, attention_mask, caches[0], logits_to_keep)
        with self.peft_model.disable_adapter():
            z_theta = _run(self.peft_model, input_ids, attention_mask, caches[1], logits_to_keep)
        return z_phi, z_theta


class PromptLearningStreams(_PeftStreams):
    """Prompt Tuning / P-Tuning (virtual token embeddings) and Prefix Tuning (virtual KV prefix).

    The adapted stream prepends the virtual tokens when its cache is empty; the base stream is the
    frozen model, untouched by prompt learning.
    """

    kind = "two-pass-prompt-learning"

    def __init__(self, peft_model):
        super().__init__(peft_model)
        cfg = peft_model.active_peft_config
        self.n_virtual = int(cfg.num_virtual_tokens)
        self.prefix = str(cfg.peft_type) in ("PeftType.PREFIX_TUNING", "PREFIX_TUNING")
        self.base = peft_model.get_base_model()

    def new_cache(self) -> StreamCache:
        return StreamCache(
            [new_cache(self.base), new_cache(self.base)], joint=False, prefix_len=self.n_virtual
        )

    def _adapted(self, input_ids, attention_mask, cache, logits_to_keep) -> torch.Tensor:
        batch, n_new = input_ids.shape
        virtual = attention_mask.new_ones(batch, self.n_virtual)
        mask = torch.cat([virtual, attention_mask], dim=1)
        first = cache is None or cache.get_seq_length() == 0
        if not first:
            return _run(self.base, input_ids, mask, cache, logits_to_keep)
        if self.prefix:
            # peft returns the learned prefix as a filled cache; on later steps it is part of `cache`.
            prefix = self.peft_model.get_prompt(batch_size=batch)
            if cache is not None:
                for layer, (k, v) in enumerate(_cache_layers(prefix)):
                    cache.update(k, v, layer)
            else:
                cache = prefix
            return _run(self.base, input_ids, mask, cache, logits_to_keep)
        embeds = self.base.get_input_embeddings()(input_ids)
        prompts = self.peft_model.get_prompt(batch_size=batch).to(embeds.dtype)
        out = self.base(
            inputs_embeds=torch.cat([prompts, embeds], dim=1),
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            **cache_kwargs(cache),
        )
        logits = out.logits
        return logits if logits_to_keep else logits[:, self.n_virtual :]

    def forward(self, input_ids, attention_mask, cache=None, logits_to_keep=0):
        caches = cache.caches if cache is not None else [None, None]
        z_phi = self._adapted(input_ids, attention_mask, caches[0], logits_to_keep)
        z_theta = _run(self.base, input_ids, attention_mask, caches[1], logits_to_keep)
        return z_phi, z_theta


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


class TwoModelStreams(LogitStreams):
    """A base model and a separately fine-tuned checkpoint that share a tokenizer."""

    kind = "two-models"

    def __init__(self, adapted: PreTrainedModel, base: PreTrainedModel, tokenizers=(None, None)):
        check_same_vocabulary(base, adapted, tokenizers[1], tokenizers[0])
        self.adapted, self.base = adapted, base
        for model in (adapted, base):
            contiguous_head_inputs(model)

    @property
    def config(self) -> PretrainedConfig:
        return self.adapted.config

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [self.adapted, self.base]

    def new_cache(self) -> StreamCache:
        return StreamCache([new_cache(self.adapted), new_cache(self.base)], joint=False)

    def forward(self, input_ids, attention_mask, cache=None, logits_to_keep=0):
        caches = cache.caches if cache is not None else [None, None]
        z_phi = _run(self.adapted, input_ids, attention_mask, caches[0], logits_to_keep)
        z_theta = _run(self.base, input_ids, attention_mask, caches[1], logits_to_keep)
        return z_phi, z_theta


SELF_CHECK_RTOL = 1e-4  # fp32/fp64 weights: cached and recomputed logits agree to this, relative


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Total-variation distance between the softmax distributions of two logit rows."""
    return float(0.5 * (a.softmax(-1) - b.softmax(-1)).abs().sum(-1).max())


def self_check(streams: LogitStreams, device: torch.device | str | None = None) -> float:
    """Check on the loaded model that cached decoding equals recomputation, for both streams.

    Runs 5 tokens through the streams without a cache, and 4 + 1 with one; this is what breaks,
    silently, when transformers changes its cache plumbing (a step then sees only its own token).
    fp32 weights: the last position's logits must agree to :data:`SELF_CHECK_RTOL` of their scale.
    bf16/fp16 weights round differently in a prefill and a one-token step (LoRA's fp32 adapter
    weights add to it: a total-variation distance of ~0.06 was seen on SmolLM2-135M in bf16), so
    there the cached step must instead be at least 3x closer, in total variation, to the
    recomputation than a step that lost its context is. Costs 3-4 forward passes over <= 5 tokens.
    Returns the largest relative logit difference seen.
    """
    ids = torch.arange(1, 6, device=device).remainder(int(streams.config.vocab_size)).unsqueeze(0)
    mask = torch.ones_like(ids)
    full = streams(ids, mask, None, 1)
    cache = streams.new_cache()
    streams(ids[:, :4], mask[:, :4], cache, 1)
    step = streams(ids[:, 4:], mask, cache, 1)
    low_precision = full[0].dtype not in (torch.float32, torch.float64)
    alone = streams(ids[:, 4:], mask[:, 4:], None, 1) if low_precision else (None, None)
    worst = 0.0
    for name, ref, got, lost in zip(("adapted", "base"), full, step, alone, strict=True):
        ref, got = ref[:, -1].float(), got[:, -1].float()
        if not (torch.isfinite(ref).all() and torch.isfinite(got).all()):
            raise unsupported_transformers(
                f"the {name} stream gave non-finite logits in the load-time self-check"
            )
        rel = float((ref - got).abs().max() / ref.abs().max().clamp_min(1.0))
        worst = max(worst, rel)
        if not low_precision and rel > SELF_CHECK_RTOL:
            detail = f"max relative logit difference {rel:.2e} > {SELF_CHECK_RTOL:g}"
        elif low_precision and _tv(ref, got) > max(0.02, _tv(ref, lost[:, -1].float()) / 3):
            detail = (
                f"total variation {_tv(ref, got):.3f}, against {_tv(ref, lost[:, -1].float()):.3f} for a step "
                "without context"
            )
        else:
            continue
        raise unsupported_transformers(
            f"with its KV cache the {name} stream's next-token logits differ from recomputing the whole "
            f"sequence ({detail}), so cached decoding would silently give other tokens"
        )
    return worst


@functools.cache
def warn_if_untested() -> None:
    """One warning when the installed transformers lies outside the tested range (the self-check
    still guards the cache path)."""
    from packaging.version import Version

    lo, hi = TESTED_TRANSFORMERS
    installed = Version(transformers.__version__)
    if not (Version(lo) <= installed < Version(_next_minor(hi))):
        log.warning(
            "svdecode is tested with transformers %s-%s; found %s. The load-time self-check passed, but "
            "report problems with this version.",
            lo,
            hi,
            transformers.__version__,
        )


PROMPT_LEARNING = {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"}
TOGGLE_ADAPTERS = {"LORA", "IA3", "ADALORA", "LOHA", "LOKR", "OFT", "BOFT", "VERA", "FOURIERFT", "HRA"}


def adapter_type(peft_model) -> str:
    """The active adapter's peft type name, e.g. ``"LORA"``."""
    return str(peft_model.active_peft_config.peft_type).split(".")[-1]


def make_streams(
    model, base: PreTrainedModel | None = None, mixed_batch: bool | None = None, tokenizers=(None, None)
):
    """Pick the right :class:`LogitStreams` for a ``PeftModel`` or a (fine-tuned, base) pair.

    ``mixed_batch=None`` uses one forward pass where peft supports it (LoRA) and two otherwise;
    ``False`` forces two passes (a benchmark baseline).
    """
    if base is not None:
        return TwoModelStreams(model, base, tokenizers)
    if not hasattr(model, "peft_config"):
        raise ModelLoadError(
            f"{type(model).__name__} is not a PeftModel; pass a PEFT model, or a fine-tuned model together with its "
            "base model (base=...)"
        )
    kind = adapter_type(model)
    if kind in PROMPT_LEARNING:
        return PromptLearningStreams(model)
    if kind not in TOGGLE_ADAPTERS:
        raise ModelLoadError(
            f"adapter type {kind} is not supported; supported: {sorted(PROMPT_LEARNING | TOGGLE_ADAPTERS)}"
        )
    if kind == "LORA" and mixed_batch is not False:
        if getattr(model.active_peft_config, "use_dora", False):
            log.warning(
                "DoRA adapter: peft cannot run mixed-adapter batches for it; using two passes instead"
            )
        else:
            return MixedBatchLoRAStreams(model)
    elif mixed_batch:
        log.warning("%s adapters cannot run mixed-adapter batches; using two passes (adapter on/off)", kind)
    return ToggleAdapterStreams(model)
