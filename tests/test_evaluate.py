"""The evaluation harness: shared-logit MC scoring, commonsense, judges, caching/resume, results schema."""

from __future__ import annotations

import dataclasses
import http.server
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model, make_tokenizer
from peft import LoraConfig, get_peft_model

from svdecode import eval as ev
from svdecode import fileio
from svdecode.calibration import calibrate_streams
from svdecode.data import Example, MCItem
from svdecode.eval import generation, labels, metrics
from svdecode.steered_model import SteeredModel


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a shared 2-core machine torch's intra-op threads spin against each other: tiny matmuls
    # get ~1000x slower. One thread keeps these tests fast.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_steered(seed: int = 0) -> SteeredModel:
    tok = make_tokenizer()
    peft_model = get_peft_model(
        make_model(len(tok), seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # random lora_B: the adapter visibly changes the distribution
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    return SteeredModel.from_peft(peft_model.eval(), tok)


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


CALIB = [
    Example(f"calib/{i}", "boolq", p, a)
    for i, (p, a) in enumerate(
        [
            ("Q: What is the capital of France?\nA:", " Paris is the capital of France."),
            ("Q: The sky is blue?\nA:", " the correct answer is true"),
            ("Q: 1 2 3?\nA:", " 4 5 6 7"),
            (
                "### Instruction: Please answer the following question with true or false. ### Response:",
                " the correct answer is false",
            ),
        ]
    )
]

MC_ITEMS = [
    MCItem(
        "truthfulqa/0",
        "What is the capital of France?",
        ("Paris is the capital of France.", "The sky is blue.", "I have no comment."),
        (1, 0, 0),
        ("Paris is the capital of France.", "Paris.", "The sky is blue.", "I have no comment."),
        (1, 1, 0, 0),
    ),
    MCItem(
        "truthfulqa/1",
        "What colour is the sky?",
        ("The sky is blue.", "answer1", "Paris"),
        (1, 0, 0),
        ("The sky is blue.", "blue", "answer1", "Paris"),
        (1, 1, 0, 0),
    ),
    MCItem(
        "truthfulqa/2",
        "What is 1 2 3?",
        ("4 5 6", "7 8 9"),
        (1, 0),
        ("4 5 6", "7 8 9", "no"),
        (1, 0, 0),
    ),
]

CS_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{q}\n\n### Response:\n"
)
CS_EXAMPLES = [
    Example(
        "boolq/test/0", "boolq", CS_PROMPT.format(q="Is the sky blue?"), "the correct answer is true", "true"
    ),
    Example(
        "boolq/test/1",
        "boolq",
        CS_PROMPT.format(q="Is Paris in Spain?"),
        "the correct answer is false",
        "false",
    ),
    Example(
        "boolq/test/2", "boolq", CS_PROMPT.format(q="Is 7 a number?"), "the correct answer is true", "true"
    ),
    Example(
        "piqa/test/0",
        "piqa",
        CS_PROMPT.format(q="solution1 or solution2?"),
        "the correct answer is solution1",
        "solution1",
    ),
    Example(
        "piqa/test/1", "piqa", CS_PROMPT.format(q="Pick one"), "the correct answer is solution2", "solution2"
    ),
]


def _flat_pairs(items, style):
    prompts, answers, owners = [], [], []
    for it in items:
        for choice in dict.fromkeys((*it.mc1_choices, *it.mc2_choices)):
            prompts.append(ev.mc_prompt(it.question, style))
            answers.append(" " + choice)
            owners.append((it.id, choice))
    return prompts, answers, owners


# --------------------------------------------------------------------------------- methods


def test_build_methods_calibrates_each_variant(model):
    names = ["base", "peft", "peft+svdecode", "peft+logit_arith", "no_projection", "no_mask", "alpha=0.3"]
    names += ["lam=-10", "lam=keep", "estimator=median", "estimator=pooled", "decoding=beam4"]
    ms = ev.build_methods(model, CALIB, names, progress=False)
    assert ms.names == [
        "base", "peft", "peft+svdecode", "peft+logit_arith", "no_projection", "no_mask", "alpha=0.3",
        "lam=-10", "lam=keep", "estimator=median", "estimator=pooled", "peft[beam4]", "peft+svdecode[beam4]",
    ]  # fmt: skip
    prompts = [c.prompt for c in CALIB]
    answers = [c.answer for c in CALIB]

    def cal(method, alpha):  # what build_methods does: items' own ids (folds), paper estimator for prob_space
        return calibrate_streams(
            model.streams, model.tokenizer, prompts, answers, alpha=alpha, method=method, progress=False,
            objective="mean" if method == "prob_space" else "nll", ids=[c.id for c in CALIB],
        )  # fmt: skip

    sv = cal("svdecode", 0.1)
    assert ms.get("peft+svdecode").mu == pytest.approx(sv.mu, rel=1e-12)
    assert ms.get("peft+svdecode").method == "svdecode" and ms.get("peft+svdecode").lam == -math.inf
    assert ms.get("peft+svdecode").score_lam is None  # scoring mode by default
    # beta of logit arithmetic: same calibration, logit-difference direction (as SteeredModel.calibrate)
    saved = model.steering
    try:
        model.steering = dataclasses.replace(saved, method="logit_arithmetic")
        beta = model.calibrate(CALIB, progress=False).mu
    finally:
        model.steering = saved
    assert ms.get("peft+logit_arith").mu == pytest.approx(beta, rel=1e-12)
    assert ms.get("no_projection").mu == pytest.approx(cal("prob_space", 0.1).mu, rel=1e-12)
    nm = ms.get("no_mask")
    assert nm.alpha == 0.0 and nm.mu == pytest.approx(cal("svdecode", 0.0).mu, rel=1e-12)
    a3 = ms.get("alpha=0.3")
    assert a3.alpha == 0.3 and a3.mu == pytest.approx(cal("svdecode", 0.3).mu, rel=1e-12)
    assert a3.mu != ms.get("peft+svdecode").mu
    assert ms.get("lam=-10").lam == -10.0 and ms.get("lam=-10").score_lam == -10.0
    assert ms.get("lam=keep").lam is None
    assert ms.get("estimator=median").mu == pytest.approx(sv.stats["estimates"]["median"])
    assert ms.get("estimator=pooled").mu == pytest.approx(sv.stats["estimates"]["pooled"])
    beam = ms.get("peft+svdecode[beam4]")
    assert beam.decoding == {"do_sample": False, "num_beams": 4} and beam.reference == "peft[beam4]"
    assert ms.get("peft[beam4]").method == "adapted"
    assert set(ms.token_mu) == {
        "svdecode@alpha=0.1", "logit_arithmetic@alpha=0.1", "prob_space@alpha=0.1",
        "svdecode@alpha=0", "svdecode@alpha=0.3",
    }  # fmt: skip
    assert ms.token_mu["svdecode@alpha=0.1"].shape == (sv.stats["n_tokens"],)
    # specs survive a JSON round trip
    for spec in ms:
        again = ev.MethodSpec.from_json(json.loads(json.dumps(spec.to_json())))
        assert again.to_json() == spec.to_json()


def test_build_methods_refuses_unknown_and_tad(model):
    with pytest.raises(ValueError, match="not implemented"):
        ev.build_methods(model, CALIB, ["tad"], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        ev.build_methods(model, CALIB, ["peft+magic"], progress=False)
    with pytest.raises(ValueError, match="calibrat"):
        ev.build_methods(model, None, ["peft+logit_arith"], progress=False)
    assert ev.expand_method_names(["alpha_sweep", "alpha=0.1"]) == [f"alpha={a}" for a in ev.ALPHA_SWEEP]


# --------------------------------------------------------------------------------- TruthfulQA MC


def test_mc_shared_logits_equal_per_method_score(model):
    names = [
        "base",
        "peft",
        "peft+svdecode",
        "peft+logit_arith",
        "no_projection",
        "no_mask",
        "lam=-10",
        "lam=-inf",
    ]
    ms = ev.build_methods(model, CALIB, [*names, "decoding=top_k50"], progress=False)
    calls = []
    forward = model.streams.forward
    model.streams.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        res = ev.evaluate_mc(model, MC_ITEMS, list(ms), batch_size=5, prompt_style="plain", progress=False)
    finally:
        del model.streams.forward
    prompts, answers, owners = _flat_pairs(MC_ITEMS, "plain")
    # one model pass per batch of pairs, shared by all eight methods
    assert len(calls) == res["model_passes"] == math.ceil(len(prompts) / 5)
    assert set(res["skipped_methods"]) == {"peft[top_k50]", "peft+svdecode[top_k50]"}
    per_method = {}
    for spec in ms:
        if spec.name not in names:
            continue
        toks = model.score(prompts, answers, batch_size=5, steering=spec.steerer(scoring=True))
        expected = {own: float(t.double().sum()) for own, t in zip(owners, toks, strict=True)}
        per_method[spec.name] = expected
        for it, rec in zip(MC_ITEMS, res["items"][spec.name], strict=True):
            assert rec["id"] == it.id
            got1 = [ev.as_float(x) for x in rec["mc1_scores"]]
            got2 = [ev.as_float(x) for x in rec["mc2_scores"]]
            assert got1 == [expected[(it.id, c)] for c in it.mc1_choices]  # exactly equal
            assert got2 == [expected[(it.id, c)] for c in it.mc2_choices]
            t1 = [s for s, lab in zip(got1, it.mc1_labels, strict=True) if lab]
            f1 = [s for s, lab in zip(got1, it.mc1_labels, strict=True) if not lab]
            t2 = [s for s, lab in zip(got2, it.mc2_labels, strict=True) if lab]
            f2 = [s for s, lab in zip(got2, it.mc2_labels, strict=True) if not lab]
            want = metrics.mc_scores(t1[0], f1, t2, f2)
            for k in ("MC1", "MC3"):
                assert rec[k] == want[k]
            assert ev.as_float(rec["MC2"]) == pytest.approx(want["MC2"], nan_ok=True)
        agg = res["metrics"][spec.name]
        assert agg["n"] == 3
        assert agg["MC1"]["mean"] == pytest.approx(np.mean([r["MC1"] for r in res["items"][spec.name]]))
    # the scoring mode is recorded with every result
    assert res["metrics"]["peft+svdecode"]["lam"] == "keep"
    assert res["metrics"]["lam=-10"]["lam"] == -10.0
    assert res["metrics"]["lam=-inf"]["lam"] == "-inf"
    assert res["items"]["peft+svdecode"][0]["lam"] == "keep"
    assert res["metrics"]["peft"]["lam"] == "n/a"
    # the methods really differ: base != peft != steered
    key = owners[0]
    assert per_method["base"][key] != per_method["peft"][key] != per_method["peft+svdecode"][key]
    # with lam=-inf some answer token falls outside the mask, which is why scoring uses "keep"
    assert any(v == -math.inf for v in per_method["lam=-inf"].values())
    assert all(math.isfinite(v) for v in per_method["peft+svdecode"].values())


def test_mc_primer_prompt_is_the_original_truthfulqa_format():
    p = ev.mc_prompt("Why?", "qa_primer")
    assert p.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy")
    assert p.endswith("A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: Why?\nA:")
    assert ev.mc_prompt("Why?", "plain") == "Q: Why?\nA:"
    with pytest.raises(ValueError):
        ev.mc_prompt("Why?", "chat")


# --------------------------------------------------------------------------------- commonsense


@pytest.mark.compat
def test_commonsense_generation_matches_model_paths(model):
    ms = ev.build_methods(model, CALIB, ["base", "peft", "peft+svdecode"], progress=False)
    res = ev.evaluate_commonsense(
        model, CS_EXAMPLES, list(ms), batch_size=2, max_new_tokens=6, progress=False
    )
    prompts = [ex.prompt for ex in CS_EXAMPLES]
    for spec in ms:
        # steered generation through SteeredModel; base/peft through the plain PEFT model, which
        # must give what the steered wrapper gives with method "base"/"adapted"
        want = model.generate_text(
            prompts, batch_size=2, max_new_tokens=6, do_sample=False, steering=spec.steerer()
        )
        recs = res["items"][spec.name]
        assert [r["output"] for r in recs] == want
        assert [r["id"] for r in recs] == [ex.id for ex in CS_EXAMPLES]
        for r, ex in zip(recs, CS_EXAMPLES, strict=True):
            assert r["pred"] == labels.extract_label(ex.dataset, r["output"])
            assert r["correct"] == int(r["pred"] == ex.label)
        m = res["metrics"][spec.name]
        assert m["datasets"]["boolq"]["n"] == 3 and m["datasets"]["piqa"]["n"] == 2
        assert m["unparseable"] == sum(labels.extract_label(r["dataset"], r["output"]) is None for r in recs)
    outs = {name: [r["output"] for r in res["items"][name]] for name in ("base", "peft")}
    assert outs["base"] != outs["peft"]


def test_commonsense_counts_unparseable_and_cis(model, monkeypatch):
    scripted = {
        "boolq/test/0": "the correct answer is true",  # correct
        "boolq/test/1": "the correct answer is true",  # wrong
        "boolq/test/2": "True or false, I cannot say",  # ambiguous -> unparseable
        "piqa/test/0": "hmm",  # no label -> unparseable
        "piqa/test/1": "the correct answer is Solution2.",  # correct (case-insensitive)
    }

    def fake_generate(model_, spec, prompts, ids, *a, **k):
        yield slice(0, len(ids)), [scripted[i] for i in ids]

    monkeypatch.setattr(generation, "generate_batches", fake_generate)
    res = ev.evaluate_commonsense(model, CS_EXAMPLES, [ev.MethodSpec("peft", "adapted")], progress=False)
    recs = res["items"]["peft"]
    assert [r["correct"] for r in recs] == [1, 0, 0, 0, 1]
    assert [r["pred"] for r in recs] == ["true", "true", None, None, "solution2"]
    m = res["metrics"]["peft"]
    b, p = m["datasets"]["boolq"], m["datasets"]["piqa"]
    assert (b["n"], b["correct"], b["unparseable"], b["ambiguous"]) == (3, 1, 1, 1)
    assert (p["n"], p["correct"], p["unparseable"], p["no_label"]) == (2, 1, 1, 1)
    assert (b["ci_lo"], b["ci_hi"]) == pytest.approx(metrics.wilson_ci(1, 3))
    assert m["unparseable"] == 2
    assert m["macro_avg"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["micro"]["accuracy"] == pytest.approx(2 / 5)
    assert (m["micro"]["ci_lo"], m["micro"]["ci_hi"]) == pytest.approx(metrics.wilson_ci(2, 5))


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


# --------------------------------------------------------------------------------- open-ended + judges


class _FakeChat(http.server.BaseHTTPRequestHandler):
    requests: list = []
    fail_next: int = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if type(self).fail_next:
            type(self).fail_next -= 1
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][-1]["content"]
        answer = prompt.split("\nA: ", 1)[-1]
        if "Madrid" in answer and "truthful" in prompt:
            reply = "No."
        elif "Paris" in answer and "truthful" in prompt:
            reply = "Yes, Paris is correct."
        elif "truthful" in prompt:
            reply = "Maybe."
        elif "no comment" in prompt:
            reply = "No, it says nothing."
        else:
            reply = "**Yes**"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_server():
    _FakeChat.requests = []
    _FakeChat.fail_next = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_judge_against_local_fake_server(fake_server):
    port = fake_server.server_address[1]
    judge = ev.OpenAIJudge(f"http://127.0.0.1:{port}", "fake-judge", api_key="sk-test", max_retries=1)
    assert judge.url == f"http://127.0.0.1:{port}/v1/chat/completions"
    v = judge.judge("What is the capital of France?", "Paris.")
    assert (v.truthful, v.informative) == (True, True)
    assert v.details["truth_reply"].startswith("Yes")
    req = _FakeChat.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "fake-judge" and req["body"]["temperature"] == 0
    assert ev.TRUTH_QUESTION in req["body"]["messages"][-1]["content"]
    assert ev.INFO_QUESTION in _FakeChat.requests[1]["body"]["messages"][-1]["content"]
    assert (judge.judge("Q?", "Madrid.").truthful, judge.judge("Q?", "I have no comment.").informative) == (
        False,
        False,
    )
    assert judge.judge("Q?", "Blue.").truthful is None  # "Maybe." is not a verdict
    _FakeChat.fail_next = 1  # one 503, then success: retried
    assert judge.judge("Q?", "Paris").truthful is True
    _FakeChat.fail_next = 5
    with pytest.raises(RuntimeError, match="failed after 2 tries"):
        judge.judge("Q?", "Paris")


def test_truthfulqa_gen_with_judges_and_rejudging_without_regenerating(
    tmp_path, model, fake_server, monkeypatch
):
    examples = [
        Example(
            f"truthfulqa/{i}",
            "truthfulqa",
            "unused",
            " Paris",
            meta={
                "question": q,
                "correct_answers": ["Paris is the capital of France."],
                "incorrect_answers": ["Madrid is the capital of France."],
            },
        )
        for i, q in enumerate(["What is the capital of France?", "Where is Paris?"])
    ]
    scripted = ["Paris is the capital of France.\n\nQ: next", "Madrid is the capital of France.\nQ: x"]
    calls = []

    def fake_generate(model_, spec, prompts, ids, *a, **k):
        calls.append(list(ids))
        assert all(p.startswith(ev.QA_PRIMER) and p.endswith("\nA:") for p in prompts)
        yield slice(0, len(ids)), [scripted[int(i.split("/")[1])] for i in ids]

    monkeypatch.setattr(generation, "generate_batches", fake_generate)
    methods = [ev.MethodSpec("peft", "adapted")]
    res = ev.evaluate_truthfulqa_gen(model, examples, methods, cache_dir=tmp_path, progress=False)
    recs = res["items"]["peft"]
    assert [r["answer"] for r in recs] == [
        "Paris is the capital of France.",
        "Madrid is the capital of France.",
    ]
    assert [r["truthful"] for r in recs] == [True, False]
    m = res["metrics"]["peft"]
    assert res["judge"]["kind"] == "proxy" and m["judge_kind"] == "proxy"
    assert (m["%Truth"], m["%Info"], m["%Truth*Info"]) == (50.0, 100.0, 50.0)
    assert len(calls) == 1

    port = fake_server.server_address[1]
    judge = ev.OpenAIJudge(f"http://127.0.0.1:{port}/v1", "fake-judge")
    res2 = ev.evaluate_truthfulqa_gen(model, examples, methods, judge, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1  # generations came from the cache; only the judging was redone
    m2 = res2["metrics"]["peft"]
    assert m2["judge_kind"] == "llm" and (m2["%Truth"], m2["%Info"]) == (50.0, 100.0)
    assert len(_FakeChat.requests) == 4


def test_similarity_and_local_lm_judges(model):
    sim = ev.SimilarityJudge()
    v = sim.judge(
        "Q?", "Paris is the capital of France.", ["Paris is the capital of France."], ["Madrid is."]
    )
    assert v.truthful is True and v.informative is True and sim.kind == "proxy"
    assert sim.judge("Q?", "I have no comment.", ["Paris."], ["Madrid."]).informative is False

    tok = model.tokenizer
    plain = model.streams.peft_model

    def reference_logp(prompt, words):
        """log sum_w p(w | prompt) with one unpadded forward per word."""
        vals = []
        for w in words:
            p_ids, w_ids = tok(prompt).input_ids, tok(w, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(plain(input_ids=torch.tensor([p_ids + w_ids])).logits[0].float(), -1)
            vals.append(sum(float(logp[len(p_ids) - 1 + j, t]) for j, t in enumerate(w_ids)))
        return float(torch.logsumexp(torch.tensor(vals, dtype=torch.float64), 0))

    items = [("What is the capital of France?", "Paris.", [], []), ("Is the sky blue?", "no", [], [])]
    # the tiny tokenizer splits " yes" into pieces: the teacher-forced path; " is"/" no" are single tokens
    for kw, single in (({}, False), ({"yes": (" is",), "no": (" no",)}, True)):
        judge = ev.LocalLMJudge(plain, tok, batch_size=2, **kw)
        assert judge.single_token is single
        verdicts = judge.judge_many(items)
        for (q, a, _, _), v in zip(items, verdicts, strict=True):
            for ask, got, key in (
                (ev.TRUTH_QUESTION, v.truthful, "truth"),
                (ev.INFO_QUESTION, v.informative, "info"),
            ):
                prompt = ev.judge_prompt(q, a, ask) + "\nAnswer:"
                yes, no = reference_logp(prompt, judge.yes), reference_logp(prompt, judge.no)
                assert v.details[f"{key}_logp_yes"] == pytest.approx(yes, abs=1e-4)
                assert v.details[f"{key}_logp_no"] == pytest.approx(no, abs=1e-4)
                assert got == (yes > no)


def test_clean_tqa_answer_and_summary_counts_unparsed():
    assert ev.clean_tqa_answer(" Paris is.\n\nQ: Next?") == "Paris is."
    assert ev.clean_tqa_answer(" A\nB\nQ: x") == "A B"
    recs = [
        {"truthful": True, "informative": True},
        {"truthful": None, "informative": True},
        {"truthful": False, "informative": None},
    ]
    m = ev.tqa_gen_metrics(recs, {"name": "x", "kind": "llm"})
    assert (m["n_unparsed_truth"], m["n_unparsed_info"]) == (1, 1)
    assert m["%Truth"] == pytest.approx(100 / 3) and m["%Truth*Info"] == pytest.approx(100 / 3)


def test_jsonable_encodes_non_finite():
    data = fileio.jsonable(
        {"a": (1.0, float("-inf")), "b": np.float32(0.5), "c": float("nan"), "d": Path("x")}
    )
    assert data == {"a": [1.0, "-inf"], "b": 0.5, "c": "nan", "d": "x"}
    json.dumps(data, allow_nan=False)


def test_mu_curve_marks_equal_direct_scoring_and_headroom_is_oracle(tmp_path, model):
    """One scoring pass gives every strength: each marked objective's MC average on the curve equals
    evaluate_mc's direct per-method scoring, and mu = 0 equals the PEFT model."""
    names = ["peft", "peft+svdecode", "objective=nll", "objective=pooled", "objective=mean"]
    res = ev.run_eval(
        model, tmp_path, ["truthfulqa_mc"], method_names=names, calib=CALIB, data={"truthfulqa_mc": MC_ITEMS},
        batch_size=4, mc_prompt_style="plain", n_boot=200, progress=False, folds=2,
    )["tasks"]["truthfulqa_mc"]  # fmt: skip
    curve = res["mu_curve"]
    assert curve["stats_capped_tokens"] == 0 and curve["n_items"] == len(MC_ITEMS)

    def mc_avg(name):
        return sum(
            (
                lambda r: (
                    sum(
                        0.0 if math.isnan(ev.as_float(r[k])) else ev.as_float(r[k])
                        for k in ("MC1", "MC2", "MC3")
                    )
                    / 3
                )
            )(r)
            for r in res["items"][name]
        ) / len(MC_ITEMS)

    assert curve["at_zero"] == pytest.approx(mc_avg("peft"), abs=1e-6)
    estimates = res["methods"]["peft+svdecode"]["calibration"]["estimates"]
    assert set(curve["marks"]) == (set(names) - {"peft"}) | {f"objective={o}" for o in estimates}
    for name, mark in curve["marks"].items():
        if name not in res["methods"]:  # an objective marked from the calibration's estimates alone
            assert mark["mu"] == estimates[mark["objective"]]
            continue
        assert mark["mu"] == res["methods"][name]["mu"]
        assert mark["test"] == pytest.approx(mc_avg(name), abs=1e-6)
    assert curve["best"] == max(curve["test"]) and curve["headroom"] == pytest.approx(
        curve["best"] - curve["at_zero"]
    )
    cal = curve["calibration"]  # these calibration examples have no choice view: NLL only
    assert cal["mu"] and len(cal["nll_per_token"]) == len(cal["mu"]) and "task" not in cal
    assert "ORACLE" in curve["oracle"]


def test_greedy_generation_at_zero_strength_is_shared_with_the_adapted_model():
    """A guard that turned steering off leaves mu = 0: greedy output is the adapted model's (the
    argmax is always kept), so the evaluation generates it once."""
    peft = ev.MethodSpec("peft", "adapted")
    off = ev.MethodSpec("peft+svdecode", "svdecode", mu=0.0)
    assert off.key(scoring=False) == peft.key(scoring=False)
    assert off.key(scoring=True) != peft.key(scoring=True)  # scoring still differs (mask renormalises)
    assert ev.MethodSpec("a", "svdecode", mu=0.5).key(False) != peft.key(False)
    assert ev.MethodSpec("b", "svdecode", mu=0.0, lam=-10.0).key(False) != peft.key(False)
    beam = ev.DECODINGS["beam4"]
    assert ev.MethodSpec("c", "svdecode", mu=0.0, decoding=beam).key(False) != ev.MethodSpec(
        "d", "adapted", decoding=beam
    ).key(False)


def test_zero_strength_greedy_generation_equals_the_adapted_model(model):
    off = ev.MethodSpec("peft+svdecode", "svdecode", mu=0.0)
    prompts = [ex.prompt for ex in CS_EXAMPLES]
    ids = [ex.id for ex in CS_EXAMPLES]
    steered = [
        t
        for _, texts in generation.generate_batches(model, off, prompts, ids, 2, 6, False, "x")
        for t in texts
    ]
    plain = [
        t
        for _, texts in generation.generate_batches(
            model, ev.MethodSpec("peft", "adapted"), prompts, ids, 2, 6, False, "x"
        )
        for t in texts
    ]
    assert steered == plain
