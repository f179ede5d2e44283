"""Property tests (hypothesis) of what svdecode reads from disk: data files (random bytes, text
encodings, JSON documents of random shape) and ``steering_config.json`` (random JSON documents and
mutations of a valid one). Each input is either read correctly or refused with svdecode's own error
naming the file (and, for the config, the field); nothing else escapes."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from svdecode.checks import strength_problem
from svdecode.data import load_task
from svdecode.errors import SvdecodeError
from svdecode.model.config import SCHEMA, ConfigError, SteeringConfig

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)
)
JSON = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                    max_leaves=12)  # fmt: skip
ROW_KEYS = st.sampled_from(["prompt", "answer", "question", "", "prompt "])
ROW = st.dictionaries(ROW_KEYS, SCALARS, max_size=3)


def _read(name: str, content: bytes):
    """load_task on a file named ``name`` holding ``content``: (examples, None) or (None, error)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        try:
            return load_task(str(path)), None
        except SvdecodeError as err:
            assert name in str(err), f"the error does not name the file: {err}"
            return None, err


def _check_examples(examples) -> None:
    assert len(examples) > 0
    for ex in examples:
        assert (
            isinstance(ex.prompt, str)
            and isinstance(ex.answer, str)
            and ex.prompt.strip()
            and ex.answer.strip()
        )


@given(st.binary(max_size=300), st.sampled_from(SUFFIXES))
def test_random_bytes_are_read_or_refused_naming_the_file(content, suffix):
    examples, _ = _read("data" + suffix, content)
    if examples is not None:
        _check_examples(examples)


@given(st.lists(ROW, max_size=5), st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
       st.sampled_from(SUFFIXES), st.booleans())  # fmt: skip
def test_rows_in_any_encoding_and_format_are_read_or_refused(rows, encoding, suffix, as_list):
    if suffix in (".csv", ".tsv"):
        sep = "," if suffix == ".csv" else "\t"
        keys = sorted({k for r in rows for k in r}) or ["prompt"]
        lines = [sep.join(keys)] + [sep.join(str(r.get(k, "")) for k in keys) for r in rows]
        text = "\n".join(lines) + "\n"
    elif suffix == ".json" and as_list:
        text = json.dumps(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        return
    examples, err = _read("rows" + suffix, content)
    if examples is not None:
        _check_examples(examples)
        if suffix in (".jsonl", ".json") and encoding.startswith("utf-8"):  # a correct read, row by row
            good = [r for r in rows if isinstance(r.get("prompt"), (str, int, float)) and not isinstance(
                r.get("prompt"), bool)]  # fmt: skip
            assert len(examples) <= len(good)


@given(JSON, st.sampled_from([".json", ".jsonl"]))
def test_json_documents_of_any_shape_are_read_or_refused(doc, suffix):
    text = json.dumps(doc, allow_nan=True)
    examples, _ = _read("doc" + suffix, text.encode())
    if examples is not None:
        _check_examples(examples)


# -- steering_config.json ------------------------------------------------------------------------

VALID = SteeringConfig(mu=-1.5).to_json()
FIELDS = sorted(SCHEMA)


def _load(doc) -> SteeringConfig | None:
    try:
        cfg = SteeringConfig.from_json(doc, "steering_config.json")
    except ConfigError as err:
        msg = str(err)
        assert "steering_config.json" in msg, msg
        if isinstance(doc, dict) and "format_version" in msg:
            return None
        if isinstance(doc, dict):
            assert any(repr(f) in msg or f in msg for f in [*FIELDS, *map(str, doc)]), msg
        return None
    # loaded: every value is within the schema, and it survives a round trip
    assert strength_problem(cfg.mu) is None and 0 <= cfg.alpha <= 1
    assert cfg.lam is None or cfg.lam == -math.inf or math.isfinite(cfg.lam)
    again = SteeringConfig.from_json(json.loads(json.dumps(cfg.to_json())), "again")
    assert again == cfg
    return cfg


@given(JSON)
def test_random_json_documents_are_refused_naming_the_field_or_loaded(doc):
    _load(doc)


@given(st.sampled_from(FIELDS + ["format_version"]), st.one_of(JSON, st.just(None)), st.sampled_from(["set", "drop"]),
       st.dictionaries(st.text(max_size=6), JSON, max_size=1))  # fmt: skip
def test_mutated_configs_are_refused_naming_the_field_or_loaded(field, value, how, extra):
    doc = dict(VALID)
    if how == "drop":
        doc.pop(field)
    else:
        doc[field] = value
    doc.update(extra)
    cfg = _load(doc)
    if cfg is not None and how == "set" and field == "mu":
        assert cfg.mu == value


@given(st.binary(max_size=200))
def test_config_files_of_random_bytes_are_refused_naming_the_file(content):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "steering_config.json").write_bytes(content)
        try:
            SteeringConfig.load(tmp)
        except ConfigError as err:
            assert "steering_config.json" in str(err)
