"""End-to-end checks on the default model (SmolLM2-135M-Instruct) with a LoRA adapter."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from svdecode.data import load_commonsense, sample
from svdecode.model.loading import load_base
from svdecode.model.steered_model import SteeredModel

# rerun by CI on the other end of the supported transformers range
pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def steered():
    model, tok = load_base("default")
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a non-trivial adapter: lora_B starts at zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return SteeredModel.from_peft(peft_model.eval(), tok, mu=-1.0)


PROMPTS = ["The capital of France is", "Question: is the sky blue? Answer with true or false.\nAnswer:"]


def test_default_model_is_smollm2(steered):
    assert steered.config.vocab_size == 49152 and steered.streams.kind == "lora-mixed-batch"
    assert steered.tokenizer.padding_side == "left" and steered.tokenizer.pad_token is not None


def test_cached_equals_uncached_on_default_model(steered):
    enc = steered.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(steered.generate(**enc, **kw), steered.generate(**enc, use_cache=False, **kw))


def test_mu_zero_scoring_mode_equals_peft_generate(steered):
    enc = steered.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    steered.steering.mu, steered.steering.lam = 0.0, None
    try:
        assert torch.equal(steered.generate(**enc, **kw), steered.wrapped[0].generate(**enc, **kw))
    finally:
        steered.steering.mu, steered.steering.lam = -1.0, float("-inf")


def test_calibrate_on_boolq(steered):
    examples = sample(load_commonsense("boolq", "train"), 6, seed=0)
    result = steered.calibrate(examples, batch_size=3, progress=False)
    n_answer = sum(len(steered.tokenizer(e.answer, add_special_tokens=False).input_ids) for e in examples)
    assert result.stats["n_tokens"] == n_answer
    assert math.isfinite(result.mu) and result.mu == steered.steering.mu
    assert result.token_mu.shape == (n_answer,)


@pytest.mark.slow
def test_a_warm_started_default_adapter_loads_with_plain_peft(tmp_path):
    """The adapter names the hub id (plain peft can fetch it); offline, the converted copy is the
    same model, and plain transformers + peft load the adapter onto it."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from svdecode.data import Example
    from svdecode.model.loading import DEFAULT_HUB_ID, default_model_path
    from svdecode.train import WarmstartConfig, warmstart

    exs = [Example(f"t/{i}", "t", f"Q: is {i} even?\nA:", " yes" if i % 2 == 0 else " no") for i in range(4)]
    res = warmstart(
        exs, tmp_path / "o", WarmstartConfig(max_steps=1, lr=1e-3), base="default", progress=False
    )
    assert (
        json.loads((tmp_path / "o" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == DEFAULT_HUB_ID
    )
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(default_model_path()), str(tmp_path / "o")
    )
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(input_ids=ids).logits, res.model(input_ids=ids).logits)
