"""svdecode.model.streams: the adapted and base logit streams of each adapter kind, cached and not."""

from __future__ import annotations

import pytest
import torch
from conftest import PEFT_CONFIGS, make_peft
from test_steered_model import PROMPTS, encode, reference_logits

from svdecode.model.streams import (
    MixedBatchLoRAStreams,
    ToggleAdapterStreams,
    make_streams,
    positions_from_mask,
)

# rerun by CI on the other end of the supported transformers range
pytestmark = pytest.mark.compat


@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_stream_logits_match_plain_forward(tokenizer, kind):
    peft_model = make_peft(kind, len(tokenizer))
    enc = encode(tokenizer, PROMPTS if kind in ("lora", "ia3") else PROMPTS[:1])
    z_phi, z_theta = make_streams(peft_model)(enc.input_ids, enc.attention_mask)
    r_phi, r_theta = reference_logits(peft_model, kind, enc.input_ids, enc.attention_mask)
    real = enc.attention_mask.bool()
    torch.testing.assert_close(z_phi[real], r_phi[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_theta[real], r_theta[real], atol=1e-5, rtol=1e-5)
    assert (z_phi - z_theta).abs().max() > 0.1  # the adapter matters


@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_cached_steps_match_full_recompute(tokenizer, kind):
    """Prefill + one token at a time through the StreamCache equals the cache-free forward."""
    peft_model = make_peft(kind, len(tokenizer))
    enc = encode(tokenizer)
    streams = make_streams(peft_model)
    full_phi, full_theta = streams(enc.input_ids, enc.attention_mask)
    cache = streams.new_cache()
    cut = enc.input_ids.shape[1] - 3
    parts = [streams(enc.input_ids[:, :cut], enc.attention_mask[:, :cut], cache)]
    for t in range(cut, enc.input_ids.shape[1]):
        parts.append(streams(enc.input_ids[:, t : t + 1], enc.attention_mask[:, : t + 1], cache))
    step_phi = torch.cat([p[0] for p in parts], 1)
    step_theta = torch.cat([p[1] for p in parts], 1)
    real = enc.attention_mask.bool()
    torch.testing.assert_close(step_phi[real], full_phi[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step_theta[real], full_theta[real], atol=1e-5, rtol=1e-4)


def test_mixed_batch_equals_two_passes(tokenizer):
    peft_model = make_peft("lora", len(tokenizer))
    mixed = make_streams(peft_model)
    two = make_streams(peft_model, mixed_batch=False)
    assert isinstance(mixed, MixedBatchLoRAStreams) and isinstance(two, ToggleAdapterStreams)
    enc = encode(tokenizer)
    for a, b in zip(
        mixed(enc.input_ids, enc.attention_mask), two(enc.input_ids, enc.attention_mask), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_positions_from_mask_count_real_tokens_from_zero():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = positions_from_mask(mask)
    assert pos[0, 2:].tolist() == [0, 1, 2] and pos[1].tolist() == [0, 1, 2, 3, 4]
