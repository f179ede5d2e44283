"""svdecode.eval.judges and truthfulqa_gen: the OpenAI-compatible, similarity and local-LM judges;
open-ended generation and rejudging."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import torch
from evalkit import (
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.data import Example
from svdecode.eval import generation
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


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
    for mod in ("sacrebleu", "rouge_score"):
        pytest.importorskip(
            mod, reason="the proxy judge's metrics need the harness extra: pip install 'svdecode[harness]'"
        )
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
    for mod in ("sacrebleu", "rouge_score"):
        pytest.importorskip(
            mod, reason="the proxy judge's metrics need the harness extra: pip install 'svdecode[harness]'"
        )
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
