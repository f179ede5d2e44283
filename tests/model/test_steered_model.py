"""SteeredModel and the logit streams: equality with slow, cache-free references."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import PEFT_CONFIGS, make_model, make_peft

from svdecode import steer_logits
from svdecode.model.config import ConfigError, SteeringConfig
from svdecode.model.loading import ModelLoadError
from svdecode.model.steered_model import SteeredModel
from svdecode.model.streams import (
    ToggleAdapterStreams,
    make_streams,
    positions_from_mask,
)

# rerun by CI on the other end of the supported transformers range
pytestmark = pytest.mark.compat

PROMPTS = ["the correct answer is", "What is the capital of France? Paris is"]


def encode(tokenizer, prompts=PROMPTS):
    tokenizer.padding_side = "left"
    return tokenizer(prompts, return_tensors="pt", padding=True)


def reference_logits(peft_model, kind, ids, mask):
    """Adapted and base logits from plain peft/transformers forwards over the full sequence."""
    with torch.no_grad():
        if kind in ("lora", "ia3"):
            pos = positions_from_mask(mask)
            z_phi = peft_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            with peft_model.disable_adapter():
                z_theta = peft_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        else:  # peft prompts ignore position ids: compare on unpadded rows only
            assert bool(mask.all())
            z_phi = peft_model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
            z_theta = peft_model.get_base_model()(input_ids=ids, attention_mask=mask).logits
    return z_phi, z_theta


def slow_greedy(peft_model, kind, ids, mask, mu, steps, alpha=0.1, lam=float("-inf")):
    """Greedy steered decoding that recomputes every full sequence without a cache."""
    for _ in range(steps):
        z_phi, z_theta = reference_logits(peft_model, kind, ids, mask)
        nxt = steer_logits(z_phi[:, -1], z_theta[:, -1], mu, alpha=alpha, lam=lam).argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("mu", [-3.0, 2.0])
def test_cached_greedy_equals_slow_reference_padded_batch(tokenizer, kind, mu):
    peft_model = make_peft(kind, len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=mu)
    enc = encode(tokenizer)
    out = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    ref = slow_greedy(peft_model, kind, enc.input_ids, enc.attention_mask, mu, 8)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kind", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_prompt_learning_greedy_equals_slow_reference(tokenizer, kind):
    peft_model = make_peft(kind, len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=-2.0)
    enc = encode(tokenizer, PROMPTS[:1])
    out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(out, slow_greedy(peft_model, kind, enc.input_ids, enc.attention_mask, -2.0, 6))


@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_cached_beam_search_equals_uncached(tokenizer, kind):
    """Beam search reorders both streams' caches; the cache-free run recomputes everything."""
    model = SteeredModel.from_peft(make_peft(kind, len(tokenizer)), tokenizer, mu=-1.5)
    enc = encode(tokenizer)
    kw = dict(
        max_new_tokens=7,
        min_new_tokens=7,
        num_beams=3,
        num_return_sequences=2,
        do_sample=False,
        pad_token_id=0,
    )
    cached = model.generate(**enc, **kw)
    uncached = model.generate(**enc, use_cache=False, **kw)
    assert cached.shape == (4, enc.input_ids.shape[1] + 7)
    assert torch.equal(cached, uncached)


def test_sampling_is_reproducible_and_respects_mask(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=-2.0, alpha=0.3)
    enc = encode(tokenizer)
    kw = dict(max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, pad_token_id=0)
    torch.manual_seed(3)
    a = model.generate(**enc, **kw)
    torch.manual_seed(3)
    b = model.generate(**enc, use_cache=False, **kw)
    assert torch.equal(a, b)
    # every sampled token was inside the confidence mask of its step (lam=-inf forbids the rest)
    ids, mask = enc.input_ids, enc.attention_mask
    for t in range(ids.shape[1], a.shape[1]):
        z = model(
            a[:, :t], attention_mask=torch.cat([mask, torch.ones(2, t - ids.shape[1], dtype=mask.dtype)], 1)
        ).logits
        assert torch.isfinite(z[:, -1].gather(-1, a[:, t : t + 1])).all()


@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_mu_zero_scoring_mode_equals_adapted_model(tokenizer, kind):
    peft_model = make_peft(kind, len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=0.0, lam=None)
    prompts = PROMPTS if kind in ("lora", "ia3") else PROMPTS[:1]
    enc = encode(tokenizer, prompts)
    out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    if kind in ("lora", "ia3"):
        plain = peft_model.generate(
            **enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
        )
    else:
        # peft 0.21's own generate() for prompt learning reads the cache under `past_key_values` and
        # re-prepends the virtual tokens every step on transformers >= 5.24: the reference is the
        # adapted model's full, cache-free forward instead.
        plain = enc.input_ids
        with torch.no_grad():
            for _ in range(6):
                z = peft_model(input_ids=plain, attention_mask=torch.ones_like(plain)).logits[:, -1]
                plain = torch.cat([plain, z.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, plain)


def test_score_matches_manual_steered_logprobs(tokenizer):
    peft_model = make_peft("lora", len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=-1.0, lam=None)
    prompts, answers = ["the correct answer is", "What is"], [" true", " the capital of France"]
    scores = model.score(prompts, answers, batch_size=2)
    for prompt, answer, got in zip(prompts, answers, scores, strict=True):
        p_ids = tokenizer(prompt).input_ids
        a_ids = tokenizer(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([p_ids + a_ids])
        z_phi, z_theta = reference_logits(peft_model, "lora", ids, torch.ones_like(ids))
        logp = torch.log_softmax(steer_logits(z_phi, z_theta, -1.0, lam=None), -1)[0]
        want = torch.stack([logp[len(p_ids) - 1 + i, a] for i, a in enumerate(a_ids)])
        assert got.shape == (len(a_ids),)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_score_with_lam_minus_inf_gives_minus_inf_outside_mask(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=1.0, alpha=0.5)
    scores = model.score(["the correct answer is"] * 2, [" true", " zzzz"])
    assert any(torch.isinf(s).any() for s in scores)
    model.steering.lam = None
    assert all(
        torch.isfinite(s).all() for s in model.score(["the correct answer is"] * 2, [" true", " zzzz"])
    )


def test_calibrate_pools_answer_tokens_only(tokenizer):
    from svdecode.data import Example
    from svdecode.steering import aggregate_mu, token_mu

    peft_model = make_peft("lora", len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer)
    pairs = [("the correct answer is", " true"), ("What is the capital", " of France"), ("Q:", " A: yes")]
    result = model.calibrate(
        [Example(str(i), "t", p, a) for i, (p, a) in enumerate(pairs)],
        objective="mean",
        guard=False,
        batch_size=2,
        progress=False,
    )
    nums, dens = [], []
    for prompt, answer in pairs:  # brute force: one pair at a time, answer positions only
        p_ids, a_ids = tokenizer(prompt).input_ids, tokenizer(answer, add_special_tokens=False).input_ids
        ids = torch.tensor([p_ids + a_ids])
        z_phi, z_theta = reference_logits(peft_model, "lora", ids, torch.ones_like(ids))
        sl = slice(len(p_ids) - 1, len(ids[0]) - 1)
        tm = token_mu(z_phi[0, sl], z_theta[0, sl], torch.tensor(a_ids))
        nums.append(tm.num)
        dens.append(tm.den)
    num, den = torch.cat(nums), torch.cat(dens)
    assert (
        result.stats["n_tokens"]
        == num.numel()
        == sum(len(tokenizer(a, add_special_tokens=False).input_ids) for _, a in pairs)
    )
    assert result.mu == pytest.approx(aggregate_mu(num, den, "mean"), rel=1e-4)
    assert result.stats["estimates"]["pooled"] == pytest.approx(aggregate_mu(num, den, "pooled"), rel=1e-4)
    assert model.steering.mu == result.mu and model.steering.calibration["n_examples"] == 3
    assert set(result.stats["quantiles"]) == {"q01", "q05", "q25", "q50", "q75", "q95", "q99"}
    assert 0.0 <= result.stats["frac_gold_outside_mask"] <= 1.0


def test_calibration_bad_input(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer)
    with pytest.raises(ValueError, match="calibration set is empty"):
        model.calibrate([], progress=False)
    with pytest.raises(ValueError, match="tokenises to nothing"):
        model.calibrate([("the correct answer is", "")], progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        model.calibrate([("a", " b")], estimator="mode", progress=False)


def test_non_finite_logits_are_refused(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=1.0)
    z = torch.zeros(1, 5)
    z[0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.combine(z, torch.zeros(1, 5))
    with pytest.raises(ConfigError, match="finite"):
        SteeringConfig(mu=float("inf"))


def test_two_models_and_vocabulary_mismatch(tokenizer):
    base, tuned = make_model(len(tokenizer), seed=0), make_model(len(tokenizer), seed=5)
    model = SteeredModel.from_models(tuned, base, tokenizer, mu=-1.0)
    enc = encode(tokenizer)
    out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    ids, mask = enc.input_ids, enc.attention_mask
    for _ in range(5):  # slow reference straight from the two models
        pos = positions_from_mask(mask)
        with torch.no_grad():
            z_phi = tuned(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            z_theta = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        nxt = steer_logits(z_phi, z_theta, -1.0).argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, ids)
    with pytest.raises(ModelLoadError, match="vocabulary mismatch"):
        SteeredModel.from_models(make_model(len(tokenizer) + 7), base, tokenizer)


def test_not_a_peft_model_and_missing_adapter_dir(tokenizer, tmp_path):
    from svdecode.model.loading import load_peft

    with pytest.raises(ModelLoadError, match="not a PeftModel"):
        SteeredModel.from_peft(make_model(len(tokenizer)), tokenizer)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_peft(tmp_path / "nope", base=make_model(len(tokenizer)))


def test_forced_mixed_batch_on_ia3_falls_back_with_a_log(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="svdecode"):
        streams = make_streams(make_peft("ia3", len(tokenizer)), mixed_batch=True)
    assert isinstance(streams, ToggleAdapterStreams)
    assert "cannot run mixed-adapter batches" in caplog.text


def test_stop_strings_and_generate_text(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=-1.0)
    texts = model.generate_text(PROMPTS, max_new_tokens=6, do_sample=False)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    first = texts[0].strip()[:2]
    if first:  # stopping on a string that the unconstrained run produced early must shorten the output
        stopped = model.generate_text(PROMPTS[:1], max_new_tokens=6, do_sample=False, stop_strings=[first])
        assert len(stopped[0]) <= len(texts[0])
