"""The vLLM engine's parts that need no vLLM (they run in the main suite): the LoRA merge, the
per-row steering and the serving folder. The engine itself: tests/integrations/vllm_engine/test_vllm_engine.py."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model
from peft import LoraConfig, get_peft_model

from svdecode.errors import ModelLoadError
from svdecode.integrations.vllm.lora import adapted_params, lora_deltas, merge_into
from svdecode.integrations.vllm.prepare import prepare
from svdecode.integrations.vllm.steer import combine_rows, with_request
from svdecode.steering import Steerer, steer_logits


@pytest.fixture()
def saved_lora(tmp_path, tokenizer):
    """A tiny Llama, a seeded random LoRA on attention and MLP weights, and its saved folder."""
    base = make_model(len(tokenizer))
    targets = ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets)
    peft_model = get_peft_model(make_model(len(tokenizer)), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    return base, peft_model.eval(), tmp_path / "adapter"


def test_merged_weights_give_the_adapted_model(saved_lora, tokenizer):
    base, peft_model, folder = saved_lora
    deltas = lora_deltas(folder)
    merged = dict(merge_into(base.state_dict().items(), deltas))
    base.load_state_dict(merged)
    ids = torch.tensor([tokenizer("the correct answer is true")["input_ids"]])
    with torch.no_grad():
        want, got = peft_model(input_ids=ids).logits, base(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-5
    assert (want - make_model(len(tokenizer))(input_ids=ids).logits).abs().max() > 1e-2  # the adapter matters
    # vLLM's fused parameter names: q/v go into qkv_proj, gate into gate_up_proj
    assert "model.layers.0.self_attn.qkv_proj.weight" in adapted_params(deltas)
    assert "model.layers.1.mlp.gate_up_proj.weight" in adapted_params(deltas)
    assert "model.layers.0.mlp.down_proj.weight" in adapted_params(deltas)


def test_merge_refuses_what_it_cannot_merge(saved_lora, tmp_path):
    _, _, folder = saved_lora
    with pytest.raises(ModelLoadError, match="no weight for LoRA target"):
        list(merge_into([("model.embed_tokens.weight", torch.zeros(2, 2))], lora_deltas(folder)))
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ModelLoadError, match="DoRA"):
        lora_deltas(folder)


def test_combine_rows_equals_each_rows_steerer():
    torch.manual_seed(0)
    z_phi, z_theta = torch.randn(5, 40) * 3, torch.randn(5, 40) * 3
    bins = {"observable": "log_max_p_adapted", "edges": [-1.0], "mu": [0.5, -2.0]}
    rows = [
        Steerer(mu=-1.5),
        Steerer(mu=2.0, alpha=0.3),
        Steerer("adapted"),
        Steerer("base"),
        Steerer(mu=0.0, mu_bins=bins),
    ]
    got = combine_rows(z_phi, z_theta, rows)
    want = [
        steer_logits(z_phi[:1], z_theta[:1], -1.5),
        steer_logits(z_phi[1:2], z_theta[1:2], 2.0, alpha=0.3),
        z_phi[2:3],
        z_theta[3:4],
        steer_logits(z_phi[4:], z_theta[4:], torch.where(z_phi[4:].log_softmax(-1).amax(-1, keepdim=True) >= -1, -2.0, 0.5)),
    ]
    assert torch.allclose(got, torch.cat(want), atol=1e-6)


def test_request_overrides():
    served = Steerer(mu=-1.0, alpha=0.2, mu_bins={"observable": "log_max_p_adapted", "edges": [-1.0], "mu": [0.5, -2.0]})
    assert with_request(served, None) is served
    assert with_request(served, {"method": "base"}) == Steerer("base", 0.0, 0.2)
    assert with_request(served, {"mu": 3}) == Steerer("svdecode", 3.0, 0.2)  # bins dropped
    assert with_request(served, {"method": "logit_arithmetic", "mu": 1.0}).method == "logit_arithmetic"
    for bad in ({"method": "nope"}, {"alpha": 2.0}, {"mu": float("nan")}, {"temperature": 1}):
        with pytest.raises(ValueError):
            with_request(served, bad)


def test_prepare_writes_a_loadable_folder(saved_lora, tmp_path, tokenizer, monkeypatch):
    base, _, folder = saved_lora
    monkeypatch.setenv("SVDECODE_CACHE", str(tmp_path / "cache"))
    base.config.architectures = ["LlamaForCausalLM"]
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    out = prepare(folder, base=str(tmp_path / "base"), mu=-2.0)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["SVDecodeSteeredLlamaForCausalLM"]
    assert cfg["svdecode"]["adapter"] == str(folder.resolve()) and cfg["svdecode"]["mu"] == -2.0
    assert (out / "model.safetensors").resolve() == (tmp_path / "base" / "model.safetensors").resolve()
    assert prepare(folder, base=str(tmp_path / "base"), mu=-2.0) == out  # reused
    assert prepare(folder, base=str(tmp_path / "base"), mu=1.0) != out
    with pytest.raises(ModelLoadError, match="no PEFT adapter"):
        prepare(tmp_path / "base")
