"""svdecode.eval.cache: resuming an interrupted evaluation, discarding records made with other settings."""

from __future__ import annotations

import json

import pytest
from evalkit import (
    CALIB,
    CS_EXAMPLES,
    MC_ITEMS,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


# --------------------------------------------------------------------------------- caching / resume


def _counting(model, monkeypatch):
    counts = {"stream_calls": 0, "plain_rows": 0}
    forward = model.streams.forward
    plain = model.streams.peft_model.generate

    def counted_forward(*a, **k):
        counts["stream_calls"] += 1
        return forward(*a, **k)

    def counted_plain(*a, **k):
        counts["plain_rows"] += int(k["input_ids"].shape[0])
        return plain(*a, **k)

    monkeypatch.setattr(model.streams, "forward", counted_forward)
    monkeypatch.setattr(model.streams.peft_model, "generate", counted_plain)
    return counts


def _strip_volatile(results):
    out = json.loads(json.dumps(results))
    out.pop("created")
    for task in out["tasks"].values():
        task.pop("cache")
        task.pop("model_passes", None)
    return out


@pytest.mark.compat
def test_resume_after_interruption_gives_same_results_with_fewer_calls(tmp_path, monkeypatch):
    model = make_steered(seed=3)
    kwargs = dict(
        tasks=["truthfulqa_mc", "commonsense"],
        method_names=["base", "peft", "peft+svdecode"],
        calib=CALIB,
        data={"truthfulqa_mc": MC_ITEMS, "commonsense": CS_EXAMPLES},
        batch_size=2,
        max_new_tokens=5,
        mc_prompt_style="plain",
        n_boot=200,
        progress=False,
    )
    counts = _counting(model, monkeypatch)
    first = ev.run_eval(model, tmp_path, **kwargs)
    full = dict(counts)
    assert full["plain_rows"] == 2 * len(CS_EXAMPLES)  # base + peft, all items
    assert all(v == {"cached": 0, "computed": 5} for v in first["tasks"]["commonsense"]["cache"].values())

    # interrupt: keep the first record of every cache file and a half-written second line
    for path in (tmp_path / "cache" / "commonsense").glob("*.jsonl"):
        lines = path.read_text().splitlines()
        path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    for path in (tmp_path / "cache" / "truthfulqa_mc").glob("*.jsonl"):
        path.write_text(path.read_text().splitlines()[0] + "\n")
    for key in counts:
        counts[key] = 0
    second = ev.run_eval(model, tmp_path, **kwargs)
    assert _strip_volatile(second) == _strip_volatile(first)
    assert all(v == {"cached": 1, "computed": 4} for v in second["tasks"]["commonsense"]["cache"].values())
    assert all(v == {"cached": 1, "computed": 2} for v in second["tasks"]["truthfulqa_mc"]["cache"].values())
    assert counts["plain_rows"] == 2 * (len(CS_EXAMPLES) - 1)
    assert 0 < counts["stream_calls"] < full["stream_calls"]
    # the truncated line was dropped, not kept as garbage
    for path in (tmp_path / "cache" / "commonsense").glob("*.jsonl"):
        assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == [
            ex.id for ex in CS_EXAMPLES
        ]

    # a complete cache: no model work at all (calibration is cached too)
    for key in counts:
        counts[key] = 0
    third = ev.run_eval(model, tmp_path, **kwargs)
    assert counts == {"stream_calls": 0, "plain_rows": 0}
    assert _strip_volatile(third) == _strip_volatile(first)


def test_item_cache_discards_records_made_with_other_settings(tmp_path):
    path = tmp_path / "m.jsonl"
    cache = ev.ItemCache(path, {"mu": "0.5"})
    cache.add({"id": "a", "x": float("-inf")})
    assert ev.ItemCache(path, {"mu": "0.5"}).get("a") == {"id": "a", "x": "-inf"}
    fresh = ev.ItemCache(path, {"mu": "0.7"})
    assert len(fresh) == 0 and (tmp_path / "m.jsonl.stale").is_file()
