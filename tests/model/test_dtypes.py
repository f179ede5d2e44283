"""Weights in bf16/fp16, devices, and the transformers compatibility seam.

The steering math must stay fp32 whatever the weights' dtype, and nothing may upcast the model.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from test_steered_model import PROMPTS, encode, make_peft, slow_greedy

import svdecode.model.streams as streams_mod
from svdecode.cli import main
from svdecode.model.loading import load_base, resolve_device, resolve_dtype
from svdecode.model.steered_model import SteeredModel
from svdecode.model.streams import UnsupportedTransformersError, self_check

pytestmark = pytest.mark.compat


def slow_steer_fp64(z_phi, z_theta, mu, alpha=0.1, lam=float("-inf")):
    """Eqs. 8-14 written out in fp64 from the given (low-precision) logits, without the fast path."""
    lp_phi = torch.log_softmax(z_phi.double(), -1)
    lp_theta = torch.log_softmax(z_theta.double(), -1)
    p = lp_phi.exp()
    r = lp_phi - lp_theta
    kl = (p * r).sum(-1, keepdim=True)
    delta = -p * (r - kl)
    keep = p >= alpha * p.max(-1, keepdim=True).values
    out = z_phi.double() + mu * delta
    return out if lam is None else torch.where(keep, out, torch.full_like(out, lam))


def bf16_peft(tokenizer, kind="lora"):
    return make_peft(kind, len(tokenizer)).to(torch.bfloat16)


@pytest.mark.parametrize("kind", ["lora", "ia3", "prompt_tuning"])
def test_bf16_steered_logits_equal_fp32_math_on_the_same_bf16_logits(tokenizer, kind):
    peft_model = bf16_peft(tokenizer, kind)
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=-2.0)
    enc = encode(tokenizer, PROMPTS if kind != "prompt_tuning" else PROMPTS[:1])
    z_phi, z_theta = model.streams(enc.input_ids, enc.attention_mask)
    assert z_phi.dtype == z_theta.dtype == torch.bfloat16  # the streams keep the weights' dtype
    steered = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert steered.dtype == torch.float32  # ... and the steering math is fp32
    ref = slow_steer_fp64(z_phi, z_theta, -2.0)
    kept = torch.isfinite(ref)
    assert torch.equal(kept, torch.isfinite(steered))
    assert torch.allclose(steered[kept].double(), ref[kept], atol=1e-4, rtol=1e-5)
    # the bf16 result is close to, but not the same as, the fp32 model's: the test exercises bf16
    fp32 = SteeredModel.from_peft(make_peft(kind, len(tokenizer)), tokenizer, mu=-2.0)
    z32 = fp32(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    both = kept & torch.isfinite(z32)
    assert 0 < (z32[both] - steered[both]).abs().max() < 1.0


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_bf16_generate_greedy_equals_cache_free_reference_and_beam_runs(tokenizer, kind):
    peft_model = bf16_peft(tokenizer, kind)
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=2.0)
    enc = encode(tokenizer)
    out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    ref = slow_greedy(peft_model, kind, enc.input_ids, enc.attention_mask, 2.0, 5)
    assert torch.equal(out, ref)
    beams = model.generate(
        **enc, max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0
    )
    uncached = model.generate(
        **enc,
        max_new_tokens=5,
        min_new_tokens=5,
        num_beams=3,
        do_sample=False,
        pad_token_id=0,
        use_cache=False,
    )
    assert beams.shape == (2, enc.input_ids.shape[1] + 5) and torch.equal(beams, uncached)


def test_bf16_scoring_is_fp32_finite_and_near_the_fp32_model(tokenizer):
    answers = [" true", " Paris"]
    bf = SteeredModel.from_peft(bf16_peft(tokenizer), tokenizer, mu=-1.0, lam=None)
    fp = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=-1.0, lam=None)
    got, ref = bf.score(PROMPTS, answers), fp.score(PROMPTS, answers)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert g.shape == r.shape and (g - r).abs().max() < 0.5


def test_bf16_weights_are_never_upcast(tokenizer):
    peft_model = bf16_peft(tokenizer)
    dtypes_before = {n: p.dtype for n, p in peft_model.named_parameters()}
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=1.0, lam=None)
    enc = encode(tokenizer)
    model.generate(**enc, max_new_tokens=3, num_beams=2, pad_token_id=0)
    model.score(PROMPTS, [" a", " b"])
    model.calibrate(list(zip(PROMPTS, [" a", " b"], strict=True)), progress=False)
    assert {n: p.dtype for n, p in peft_model.named_parameters()} == dtypes_before
    base_params = [p for n, p in peft_model.named_parameters() if "lora_" not in n]
    assert base_params and all(p.dtype == torch.bfloat16 for p in base_params)


def test_load_base_and_from_pretrained_take_dtype_names(tokenizer, tmp_path):
    make_model(len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model, _ = load_base(str(tmp_path / "base"), dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load_base(str(tmp_path / "base"), dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the checkpoint's own dtype
    peft_model = make_peft("lora", len(tokenizer))
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    SteeredModel.from_peft(peft_model, tokenizer, mu=0.5).save_pretrained(tmp_path / "steered")
    loaded = SteeredModel.from_pretrained(tmp_path / "steered", dtype="bf16", device="cpu")
    assert loaded.dtype == torch.bfloat16 and loaded.steering.mu == 0.5
    z = loaded(**encode(tokenizer)).logits
    assert z.dtype == torch.float32 and torch.isfinite(z).any()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("int8", "unknown dtype 'int8'"),
        (torch.int64, "not a floating-point type"),
        ("float64x", "unknown dtype"),
    ],
)
def test_bad_dtype_is_named(value, message):
    with pytest.raises(ValueError, match=message):
        resolve_dtype(value)


def test_dtype_aliases():
    from svdecode.model.loading import DTYPE_NAMES

    assert all(resolve_dtype(name) is not None for name in DTYPE_NAMES)
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(None) is torch.float32 and resolve_dtype("auto") == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_device_is_a_clear_error(tokenizer, tmp_path, capsys):
    with pytest.raises(ValueError, match="no usable CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    assert resolve_device("auto").type in ("cpu", "mps")
    make_model(len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    peft_model = make_peft("lora", len(tokenizer))
    peft_model.save_pretrained(tmp_path / "adapter")
    args = ["generate", "--adapter", str(tmp_path / "adapter"), "--base", str(tmp_path / "base")]
    assert main([*args, "--prompt", "the", "--device", "cuda"]) == 2
    assert "cuda" in capsys.readouterr().err
    assert main([*args, "--prompt", "the", "--device", "cpu", "--device-map", "auto"]) == 2
    assert "not both" in capsys.readouterr().err


def test_cli_generate_in_bf16(tokenizer, tmp_path, capsys):
    make_model(len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    make_peft("lora", len(tokenizer)).save_pretrained(tmp_path / "adapter")
    args = ["generate", "--adapter", str(tmp_path / "adapter"), "--base", str(tmp_path / "base"), "--mu", "1"]
    assert (
        main([*args, "--prompt", "the correct answer is", "--max-new-tokens", "4", "--dtype", "bfloat16"])
        == 0
    )
    assert capsys.readouterr().out.strip()


# -- the transformers seam and the load-time self-check ----------------------------------------


def test_self_check_passes_on_every_stream_kind(tokenizer):
    for kind in ("lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"):
        model = SteeredModel.from_peft(make_peft(kind, len(tokenizer)), tokenizer)
        assert self_check(model.streams) < 1e-5


@pytest.mark.parametrize("kind", ["lora", "ia3", "prefix_tuning"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_dropped_cache_is_refused_at_load_time(tokenizer, monkeypatch, kind, dtype):
    """The transformers 5.24 failure: the model never sees the cache, so each step sees one token."""
    peft_model = make_peft(kind, len(tokenizer)).to(dtype)
    SteeredModel.from_peft(peft_model, tokenizer)  # passes as installed
    monkeypatch.setattr(streams_mod, "cache_kwargs", lambda cache: {})
    with pytest.raises(
        UnsupportedTransformersError, match=r"svdecode supports transformers 5\.23-5\.24; found"
    ):
        SteeredModel.from_peft(peft_model, tokenizer)


def test_generate_finds_the_cache_under_its_installed_name(tokenizer):
    """generate() hands our forward the cache under the installed transformers' name; the steered
    forward must return it under the same name, or every step would start a fresh cache."""
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=1.0)
    enc = encode(tokenizer)
    out = model(**enc, use_cache=True)
    cache = streams_mod.output_cache(out)
    assert cache is not None and cache.get_seq_length() == enc.input_ids.shape[1]
    nxt = out.logits[:, -1:].argmax(-1)
    mask = torch.cat([enc.attention_mask, torch.ones_like(nxt)], 1)
    step = model(input_ids=nxt, attention_mask=mask, **streams_mod.cache_kwargs(cache)).logits
    full = model(input_ids=torch.cat([enc.input_ids, nxt], 1), attention_mask=mask).logits
    assert torch.allclose(step[:, -1], full[:, -1], atol=1e-4)


def test_both_cache_names_are_refused_together(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer)
    cache = model.streams.new_cache()
    with pytest.raises(ValueError, match="both `cache` and `past_key_values`"):
        model(**encode(tokenizer), cache=cache, past_key_values=cache)


def test_the_lm_head_gets_contiguous_inputs(tokenizer):
    """torch's CPU bf16 F.linear expands the head's weight per row for a non-contiguous input
    (transformers' logits_to_keep slice): the streams hand the head a contiguous copy instead."""
    peft_model = bf16_peft(tokenizer)
    head = peft_model.get_base_model().get_output_embeddings()
    seen = []
    enc = encode(tokenizer)
    before = peft_model(**enc, logits_to_keep=1).logits
    SteeredModel.from_peft(peft_model, tokenizer)
    SteeredModel.from_peft(peft_model, tokenizer)  # idempotent: one hook
    head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    after = peft_model(**enc, logits_to_keep=1).logits
    assert seen == [True] and len(head._forward_pre_hooks) == 2
    assert torch.equal(before, after)
