"""svdecode.fileio: atomic writes, JSON that round-trips, stable hashes and file-safe names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from svdecode import fileio
from svdecode.errors import InputError


def test_jsonable_encodes_non_finite():
    data = fileio.jsonable(
        {"a": (1.0, float("-inf")), "b": np.float32(0.5), "c": float("nan"), "d": Path("x")}
    )
    assert data == {"a": [1.0, "-inf"], "b": 0.5, "c": "nan", "d": "x"}
    json.dumps(data, allow_nan=False)


def test_jsonable_turns_tensors_into_lists_and_refuses_what_it_cannot_store():
    assert fileio.jsonable(torch.tensor([1.5, float("inf")])) == [1.5, "inf"]
    assert fileio.jsonable(torch.tensor(3)) == 3
    assert fileio.jsonable({1: True, "n": None}) == {"1": True, "n": None}
    with pytest.raises(TypeError, match="cannot store set"):
        fileio.jsonable({1, 2})


def test_write_json_atomic_round_trips_and_refuses_nan_leaving_the_old_file(tmp_path):
    path = fileio.write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("\n")
    with pytest.raises(ValueError):
        fileio.write_json_atomic(path, {"x": float("nan")})
    assert json.loads(path.read_text()) == {"x": [1, 2]}  # the old content, whole
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left behind


def test_short_hash_is_stable_order_free_and_16_hex_digits():
    h = fileio.short_hash({"b": 1, "a": (2, 3)})
    assert h == fileio.short_hash({"a": [2, 3], "b": 1}) and len(h) == 16
    assert int(h, 16) >= 0 and h != fileio.short_hash({"a": [2, 3], "b": 2})


def test_slug_keeps_method_names_readable_and_file_safe():
    assert fileio.slug("alpha=0.2") == "alpha=0.2"
    assert fileio.slug("peft[beam4]") == "peft_beam4_"
    assert fileio.slug("a/b c") == "a_b_c"


def test_read_json_file_names_the_file_it_refuses(tmp_path):
    with pytest.raises(InputError, match=r"results file '.*missing.json' does not exist"):
        fileio.read_json_file(tmp_path / "missing.json", "results file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.json is not valid JSON"):
        fileio.read_json_file(tmp_path / "bad.json", "results file")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert fileio.read_json_file(tmp_path / "ok.json", "results file") == {"a": 1}
