"""svdecode.model.fingerprint: a base model's fingerprint, equal for the same weights whatever their
dtype, different for other weights; where the warm-start recorded it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model

from svdecode.errors import ModelLoadError
from svdecode.model.fingerprint import (
    BaseMismatchError,
    base_fingerprint,
    compare_fingerprints,
    recorded_fingerprint,
    vocab_size,
)
from svdecode.runs import rundir


def test_the_fingerprint_records_architecture_and_16_embedding_norms(tokenizer):
    model = make_model(len(tokenizer))
    fp = base_fingerprint(model)
    emb = model.get_input_embeddings().weight.double()
    rows = torch.linspace(0, emb.shape[0] - 1, steps=16).long()
    assert fp["embedding_probe"] == [round(x, 6) for x in emb[rows].abs().sum(1).tolist()]
    assert (fp["model_type"], fp["vocab_size"], fp["hidden_size"], fp["num_hidden_layers"]) == (
        "llama",
        len(tokenizer),
        32,
        2,
    )
    assert vocab_size(model) == len(tokenizer)


def test_the_same_weights_in_half_precision_match_other_weights_do_not(tokenizer):
    model = make_model(len(tokenizer), seed=0)
    fp = base_fingerprint(model)
    compare_fingerprints(fp, make_model(len(tokenizer), seed=0).to(torch.bfloat16), "the adapter")
    with pytest.raises(
        BaseMismatchError, match=r"the adapter was trained on a base model with other weights"
    ):
        compare_fingerprints(fp, make_model(len(tokenizer), seed=1), "the adapter")
    with pytest.raises(BaseMismatchError, match=r"num_hidden_layers=2.*num_hidden_layers=3"):
        compare_fingerprints(fp, make_model(len(tokenizer), layers=3), "the adapter")
    with pytest.raises(ValueError, match="hint here"):
        compare_fingerprints(fp, make_model(len(tokenizer), seed=1), "x", error=ValueError, hint="hint here")


def test_the_recorded_fingerprint_comes_from_the_manifest_or_a_legacy_warmstart_json(tmp_path):
    assert recorded_fingerprint(tmp_path) is None  # a plain peft folder
    (tmp_path / "warmstart.json").write_text(json.dumps({"base_fingerprint": {"vocab_size": 7}}))
    assert recorded_fingerprint(tmp_path) == {"vocab_size": 7}
    rundir.record_stage(tmp_path, "warmstart", {"lr": 1}, [], extra={"base_fingerprint": {"vocab_size": 9}})
    assert recorded_fingerprint(tmp_path) == {"vocab_size": 9}
    bad = tmp_path / "old"
    bad.mkdir()
    (bad / "warmstart.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="warmstart.json is corrupt"):
        recorded_fingerprint(bad)
