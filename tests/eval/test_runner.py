"""svdecode.eval.runner: results.json schema, paired differences, refused calibration/test overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evalkit import (
    CALIB,
    CS_EXAMPLES,
    MC_ITEMS,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode import fileio
from svdecode.data import Example
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


# --------------------------------------------------------------------------------- results.json


def test_results_json_schema_round_trip_and_paired_diffs(tmp_path, model):
    results = ev.run_eval(
        model,
        tmp_path,
        ["truthfulqa_mc", "commonsense"],
        method_names=["base", "peft", "peft+svdecode", "decoding=beam4"],
        calib=CALIB,
        data={"truthfulqa_mc": MC_ITEMS, "commonsense": CS_EXAMPLES},
        batch_size=4,
        max_new_tokens=4,
        mc_prompt_style="plain",
        n_boot=300,
        seed=7,
        progress=False,
        run_info={"warmstart_fraction": 0.25},
    )
    loaded = ev.load_results(tmp_path)
    assert loaded == json.loads(json.dumps(fileio.jsonable(results)))
    assert loaded["schema"] == ev.SCHEMA
    assert loaded["config"]["seed"] == 7 and loaded["config"]["run_info"] == {"warmstart_fraction": 0.25}
    assert {"torch", "transformers", "peft", "python", "svdecode"} <= set(loaded["versions"])
    assert "TaD" in loaded["not_implemented"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing
    mc = loaded["tasks"]["truthfulqa_mc"]
    assert set(mc) >= {
        "config",
        "methods",
        "items",
        "metrics",
        "paired",
        "cache",
        "skipped_methods",
        "n_items",
    }
    spec = mc["methods"]["peft+svdecode"]
    assert spec["calibration"]["n_tokens"] > 0 and spec["lam"] == "-inf" and spec["score_lam"] == "keep"
    mu_t = np.load(tmp_path / spec["token_mu_file"])
    assert mu_t.shape == (spec["calibration"]["n_tokens"],)
    assert float(mu_t.mean()) == pytest.approx(spec["calibration"]["estimates"]["mean"])
    # paired differences: every method vs peft, on the same items, per metric
    for task, metric_names in (
        ("truthfulqa_mc", ["MC1", "MC2", "MC3", "MC_avg"]),
        ("commonsense", ["accuracy"]),
    ):
        paired = loaded["tasks"][task]["paired"]
        for method in loaded["tasks"][task]["items"]:
            if method == "peft":
                continue
            for metric in metric_names:
                assert any(
                    p["method"] == method and p["reference"] == "peft" and p["metric"] == metric
                    for p in paired
                )
    cs = loaded["tasks"]["commonsense"]
    # the decoding variant is also compared with its own reference
    assert any(
        p["method"] == "peft+svdecode[beam4]" and p["reference"] == "peft[beam4]" for p in cs["paired"]
    )
    p = next(
        p for p in cs["paired"] if p["method"] == "base" and p["reference"] == "peft" and p["subset"] == "all"
    )
    base = [r["correct"] for r in cs["items"]["base"]]
    peft = [r["correct"] for r in cs["items"]["peft"]]
    assert p["n"] == 5
    assert p["diff"] == pytest.approx(np.mean(base) - np.mean(peft))
    assert p["lo"] <= p["diff"] <= p["hi"]
    mc1 = next(p for p in mc["paired"] if p["method"] == "peft+svdecode" and p["metric"] == "MC1")
    assert mc1["diff"] == pytest.approx(
        np.mean([r["MC1"] for r in mc["items"]["peft+svdecode"]])
        - np.mean([r["MC1"] for r in mc["items"]["peft"]])
    )
    md = (tmp_path / "results.md").read_text()
    assert "## TruthfulQA multiple choice" in md and "peft+svdecode" in md and "Paired differences" in md
    assert "TaD not implemented" in md


def test_run_eval_rejects_calibration_overlapping_test_items(tmp_path, model):
    leaky = [Example("truthfulqa/1", "truthfulqa", "Q: x\nA:", " y")]
    with pytest.raises(ValueError, match="calibration example"):
        ev.run_eval(
            model, tmp_path, ["truthfulqa_mc"], calib=leaky, data={"truthfulqa_mc": MC_ITEMS}, progress=False
        )
