"""svdecode.model.config: the steering_config.json artifact (schema, formats 1-3, refusals)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, make_peft
from test_steered_model import encode

from svdecode.model.config import CONFIG_NAME, ConfigError, SteeringConfig
from svdecode.model.steered_model import SteeredModel


def test_save_and_from_pretrained_round_trip(tokenizer, tmp_path):
    peft_model = make_peft("lora", len(tokenizer))
    model = SteeredModel.from_peft(peft_model, tokenizer, alpha=0.2)
    model.calibrate([("the correct answer is", " true"), ("What is", " the capital")], progress=False)
    # The base weights as a local folder (same seed as make_peft's) so the artifact loads offline.
    base_dir = tmp_path / "base"
    make_model(len(tokenizer), seed=0).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model.steering.base_model = str(base_dir)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    out = model.save_pretrained(tmp_path / "steered")
    saved = json.loads(out.read_text())
    assert saved["mu"] == model.steering.mu and saved["lam"] == "-inf" and saved["adapter_type"] == "LORA"
    assert saved["calibration"]["n_tokens"] > 0 and saved["library_version"]

    loaded = SteeredModel.from_pretrained(tmp_path / "steered")
    assert loaded.steering.mu == model.steering.mu and loaded.steering.alpha == 0.2
    enc = encode(tokenizer)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(**enc, **kw), model.generate(**enc, **kw))


def test_corrupt_or_incompatible_config_is_refused(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        SteeringConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format_version": 99, "mu": 1.0}))
    with pytest.raises(ConfigError, match="format_version 99"):
        SteeringConfig.load(tmp_path)
    good = SteeringConfig(mu=-1.5, lam=None).to_json()
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**good, "mu": "NaN?"}))
    with pytest.raises(ConfigError, match=str(tmp_path)):
        SteeringConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="not a saved SteeredModel"):
        SteeringConfig.load(tmp_path / "missing")
