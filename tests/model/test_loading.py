"""svdecode.model.loading: dtype and device names, the default model's aliases, adapter folders
checked before peft reads them, and an adapter loaded onto the base it was trained on."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_peft

from svdecode.errors import ModelLoadError
from svdecode.model import loading
from svdecode.model.fingerprint import BaseMismatchError, base_fingerprint
from svdecode.runs import rundir


def test_dtype_names_and_aliases_resolve_to_torch_dtypes():
    assert loading.resolve_dtype(None) is torch.float32
    assert (
        loading.resolve_dtype("bf16") is torch.bfloat16
        and loading.resolve_dtype("torch.float16") is torch.float16
    )
    assert loading.resolve_dtype("AUTO") == "auto" and loading.resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="unknown dtype 'int8'; use one of auto, float32, bfloat16, float16"):
        loading.resolve_dtype("int8")
    with pytest.raises(ValueError, match="not a floating-point type"):
        loading.resolve_dtype(torch.int32)


def test_devices_are_checked_against_this_machine():
    assert loading.resolve_device(None) is None and loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        loading.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            loading.resolve_device("cuda")


def test_the_default_model_is_recorded_by_its_hub_id_and_local_folders_by_absolute_path(
    tmp_path, monkeypatch
):
    assert loading.portable_base_name("default") == loading.DEFAULT_HUB_ID
    assert loading.portable_base_name("owner/name") == "owner/name"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    assert loading.portable_base_name("base") == str(tmp_path / "base")


def test_adapter_folders_are_checked_with_errors_naming_them(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        loading.read_adapter_config(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="holds no adapter_config.json"):
        loading.read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(ModelLoadError, match="expected a peft adapter config"):
        loading.read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="no adapter weights .* not saved completely"):
        loading.read_adapter_config(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert loading.read_adapter_config(tmp_path) == {"peft_type": "LORA"}


def test_two_models_must_share_a_vocabulary(tokenizer):
    loading.check_same_vocabulary(make_model(10), make_model(10, seed=1))
    with pytest.raises(ModelLoadError, match="the base model has 10 output tokens, the adapted model 12"):
        loading.check_same_vocabulary(make_model(10), make_model(12))


def test_load_peft_refuses_another_base_than_the_recorded_one_unless_forced(tokenizer, tmp_path):
    peft_model = make_peft("lora", len(tokenizer), seed=0)
    peft_model.save_pretrained(tmp_path)
    fp = base_fingerprint(make_model(len(tokenizer), seed=0))
    rundir.record_stage(tmp_path, "warmstart", {}, [], extra={"base_fingerprint": fp})
    ids = torch.tensor([[5, 6, 7]])
    loaded = loading.load_peft(tmp_path, make_model(len(tokenizer), seed=0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, peft_model(input_ids=ids).logits)
    with pytest.raises(BaseMismatchError, match="other weights"):
        loading.load_peft(tmp_path, make_model(len(tokenizer), seed=1))
    assert loading.load_peft(tmp_path, make_model(len(tokenizer), seed=1), force=True) is not None
    assert loading.same_adapter_weights(loaded, tmp_path)
