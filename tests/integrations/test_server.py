"""The OpenAI-compatible server, driven by the official ``openai`` client against a real uvicorn
server on a free loopback port, with a tiny random-weight LoRA model (offline)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

for _extra in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(
        _extra, reason=f"{_extra} is not installed: pip install 'svdecode[dev]' (serve extra + openai)"
    )

import httpx2 as httpx
import openai
import torch
import uvicorn
from conftest import make_model, make_tokenizer
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from svdecode import steering
from svdecode.integrations.server.app import ServerSettings, create_app
from svdecode.integrations.server.engine import RowTracker, _held_back, load_model
from svdecode.model.steered_model import SteeredModel
from svdecode.steering import BatchSteerer, Steerer, StrengthBins

MU = -4.0  # the saved (calibrated) mu of the test model
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPT = "Paris is"
SETTINGS = dict(max_tokens=64, max_batch=8, max_queue=64, max_body_bytes=64 * 1024, batch_wait_ms=20.0)


@pytest.fixture(scope="module")
def steered_dir(tmp_path_factory) -> Path:
    """base model + LoRA adapter (random, visibly changes the distribution) + steering_config.json."""
    root = tmp_path_factory.mktemp("served")
    tok = make_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    make_model(len(tok)).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(root / "base"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    SteeredModel.from_peft(peft_model.eval(), tok, mu=MU).save_pretrained(root / "steered")
    return root / "steered"


@pytest.fixture(scope="module")
def model(steered_dir):
    return load_model(steered_dir)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running_server(model, **settings):
    """A real uvicorn server on a free loopback port, in a thread; yields (base url, server, app)."""
    app = create_app(model, ServerSettings(**settings))
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, app
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def served(model):
    with running_server(model, **SETTINGS) as (url, _, app):
        yield url, app


@pytest.fixture()
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture()
def slow_steps(monkeypatch):
    """30 ms per generated token, so a 64-token request lasts ~2 s (the tiny model is too fast
    to interrupt otherwise)."""
    original = RowTracker.__call__

    def slow(self, input_ids, scores, **kwargs):
        time.sleep(0.03)
        return original(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(RowTracker, "__call__", slow)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def health(url: str) -> dict:
    return httpx.get(url + "/health").json()


def library_text(steered_dir, prompt: str, max_tokens: int, **steering_kwargs) -> str:
    """What SteeredModel.generate_text gives, greedy, with these steering settings."""
    ref = SteeredModel.from_pretrained(steered_dir)
    for key, value in steering_kwargs.items():
        setattr(ref.steering, key, value)
    return ref.generate_text([prompt], max_new_tokens=max_tokens, do_sample=False)[0]


def scalar_combine(a: torch.Tensor, b: torch.Tensor, r: Steerer) -> torch.Tensor:
    """One row through the core steering functions with scalar settings."""
    if r.method == "svdecode":
        return steering.steer_logits(a, b, r.mu, alpha=r.alpha, lam=r.lam)
    if r.method == "logit_arithmetic":
        return steering.logit_arithmetic(a, b, r.mu, alpha=r.alpha, lam=r.lam)
    return (a if r.method == "adapted" else b).float()


# -- per-row steering against the scalar core ----------------------------------------------------
def test_combine_rows_equals_the_scalar_combine_of_each_row():
    gen = torch.Generator().manual_seed(0)
    z_phi, z_theta = (torch.randn(6, 1, 50, generator=gen) * 3 for _ in range(2))
    rows = [
        Steerer("svdecode", -4.0, 0.1, float("-inf")),
        Steerer("svdecode", 2.5, 0.1, float("-inf")),
        Steerer("adapted", 0.0, 0.1, float("-inf")),
        Steerer("base", 0.0, 0.1, float("-inf")),
        Steerer("svdecode", -1.0, 0.3, None),
        Steerer("logit_arithmetic", 0.5, 0.1, float("-inf")),
    ]
    got = BatchSteerer(rows)(z_phi, z_theta)
    for i, r in enumerate(rows):
        want = scalar_combine(z_phi[i : i + 1], z_theta[i : i + 1], r)
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-6)
    assert torch.isinf(got[0]).any() and torch.isfinite(got[4]).all()  # lam -inf vs the scoring mode
    same = [rows[0]] * 6
    assert torch.equal(BatchSteerer(same)(z_phi, z_theta), steering.steer_logits(z_phi, z_theta, -4.0))
    with pytest.raises(ValueError, match="2 row settings for a batch of 6"):
        BatchSteerer(rows[:2])(z_phi, z_theta)


def test_combine_rows_applies_calibrated_binned_strengths_per_row():
    gen = torch.Generator().manual_seed(1)
    z_phi, z_theta = (torch.randn(4, 1, 50, generator=gen) * 3 for _ in range(2))
    bins = StrengthBins((-2.0,), (-3.0, 1.5))
    rows = [
        Steerer("svdecode", 0.0, 0.1, float("-inf"), bins),
        Steerer("svdecode", -4.0, 0.1, float("-inf")),
    ] * 2
    got = BatchSteerer(rows)(z_phi, z_theta)
    obs = torch.log_softmax(z_phi[0::2], -1).amax(-1, keepdim=True)
    mu = torch.where(obs >= -2.0, torch.tensor(1.5), torch.tensor(-3.0))
    torch.testing.assert_close(
        got[0::2], steering.steer_logits(z_phi[0::2], z_theta[0::2], mu), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        got[1::2], steering.steer_logits(z_phi[1::2], z_theta[1::2], -4.0), rtol=0, atol=1e-6
    )


def test_held_back_text_waits_for_partial_characters_and_stop_prefixes():
    assert _held_back("abc\ufffd\ufffd", []) == 2
    assert _held_back("hello wo", ["world"]) == 2
    assert _held_back("hello w", ["xyz", "wx"]) == 1
    assert _held_back("hello", ["xyz"]) == 0


# -- the API ------------------------------------------------------------------------------------
def test_models_lists_steered_adapter_and_base_from_one_server(client):
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == ["svdecode", "svdecode:adapter", "svdecode:base"]
    assert models["svdecode"].model_extra["svdecode"] == {"method": "svdecode", "mu": MU, "alpha": 0.1}
    assert models["svdecode:base"].model_extra["svdecode"]["method"] == "base"


def test_completions_equal_library_generation_for_each_variant(client, steered_dir, model):
    n_prompt = len(model.tokenizer(PROMPT)["input_ids"])
    for name, settings in [
        ("svdecode", {}),
        ("svdecode:adapter", {"method": "adapted"}),
        ("svdecode:base", {"method": "base"}),
    ]:
        r = client.completions.create(model=name, prompt=PROMPT, max_tokens=10, temperature=0)
        assert r.choices[0].text == library_text(steered_dir, PROMPT, 10, **settings), name
        assert r.model == name and r.object == "text_completion" and r.choices[0].finish_reason == "length"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
            n_prompt,
            10,
            n_prompt + 10,
        )


def test_steered_plain_and_base_differ_where_they_should(client):
    def text(model, **extra):
        r = client.completions.create(
            model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body=extra
        )
        return r.choices[0].text

    steered, plain, base = text("svdecode"), text("svdecode:adapter"), text("svdecode:base")
    assert len({steered, plain, base}) == 3
    # mu = 0 and alpha = 0 (no mask) leave z_phi unchanged: exactly the plain adapter
    assert text("svdecode", mu=0.0, alpha=0.0) == plain
    assert text("svdecode", mu=MU) == steered  # the calibrated mu is the default
    assert text("svdecode", mu=-20.0) != steered


def test_a_request_strength_stays_in_its_request(client, model):
    """Rows with their own mu share batches with default rows: each gets its own text, and the
    served model's steerer is unchanged afterwards (a leaked per-request steerer would show)."""
    own = model.steerer

    def text(**extra):
        r = client.completions.create(
            model="svdecode", prompt=PROMPT, max_tokens=8, temperature=0, extra_body=extra
        )
        return r.choices[0].text

    default, custom = text(), text(mu=-20.0)
    assert default != custom
    extras = [{"mu": -20.0} if i % 2 else {} for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        texts = list(pool.map(lambda extra: text(**extra), extras))
    assert texts == [custom if extra else default for extra in extras]
    assert model.steerer == own and text() == default


def test_a_strength_fp32_cannot_steer_with_is_a_400_naming_mu(served):
    body = {"model": "svdecode", "prompt": "x", "mu": 1e300}  # finite, but not in fp32
    r = httpx.post(
        served[0] + "/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "mu", r.text
    assert "magnitude at most 1e+30" in r.json()["error"]["message"]


def test_chat_and_streaming_reassemble_to_the_non_streamed_text(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    full = client.chat.completions.create(model="svdecode", messages=messages, max_tokens=12, temperature=0)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="svdecode",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == full.choices[0].message.content
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1  # really streamed

    done = client.completions.create(
        model="svdecode:base", prompt=[PROMPT, "the sky"], n=2, max_tokens=9, temperature=0
    )
    parts: dict[int, str] = {}
    for c in client.completions.create(
        model="svdecode:base", prompt=[PROMPT, "the sky"], n=2, max_tokens=9, temperature=0, stream=True
    ):
        parts[c.choices[0].index] = parts.get(c.choices[0].index, "") + c.choices[0].text
    assert parts == {c.index: c.text for c in done.choices} and len(parts) == 4


def test_default_max_tokens_shrinks_to_the_room_left_in_the_context(client, model):
    prompt = LONG[:400]  # ~200 tokens of the tiny model's 256
    messages = [{"role": "user", "content": prompt}]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    n_prompt = len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert 256 - n_prompt < SETTINGS["max_tokens"]  # the server's own default would not fit
    r = client.chat.completions.create(model="svdecode:base", messages=messages, temperature=0)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, 256 - n_prompt)
    assert r.choices[0].finish_reason == "length"


def test_stop_strings_cut_the_text_streamed_or_not(client):
    def complete(**kw):
        return client.completions.create(
            model="svdecode:adapter", prompt=PROMPT, max_tokens=12, temperature=0, **kw
        )

    text = complete().choices[0].text
    for i in range(1, 8):  # some of these stops span two tokens: the stream must hold their start back
        stop = text[i : i + 3]
        want = text[: text.find(stop)]
        r = complete(stop=[stop, "zzz"])
        assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
        assert "".join(c.choices[0].text for c in complete(stop=stop, stream=True)) == want


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(client):
    def sample(seed, **kw):
        r = client.completions.create(
            model="svdecode", prompt=PROMPT, max_tokens=10, temperature=1.0, seed=seed, **kw
        )
        return [c.text for c in r.choices]

    alone = sample(7, n=2)
    assert alone[0] != alone[1]  # each choice has its own random stream
    with ThreadPoolExecutor(6) as pool:  # the same request among others with other settings
        futures = [pool.submit(sample, 7, n=2)]
        futures += [pool.submit(sample, s) for s in range(5)]
        assert futures[0].result() == alone
    assert sample(8, n=2) != alone
    greedy = client.completions.create(model="svdecode", prompt=PROMPT, max_tokens=10, temperature=0)
    assert sample(3, top_p=1e-6) == [greedy.choices[0].text]  # top-p keeps only the top token


def test_twenty_concurrent_requests_are_batched_and_all_answered(client, served):
    cases = [
        (m, p) for m in ("svdecode", "svdecode:adapter", "svdecode:base") for p in (PROMPT, "the sky is")
    ]
    solo = {
        c: client.completions.create(model=c[0], prompt=c[1], max_tokens=8, temperature=0).choices[0].text
        for c in cases
    }
    before = health(served[0])["stats"]
    with ThreadPoolExecutor(20) as pool:
        jobs = [cases[i % len(cases)] for i in range(20)]
        texts = list(
            pool.map(
                lambda c: (
                    client.completions.create(model=c[0], prompt=c[1], max_tokens=8, temperature=0)
                    .choices[0]
                    .text
                ),
                jobs,
            )
        )
    assert texts == [solo[c] for c in jobs]
    after = health(served[0])["stats"]
    assert after["rows"] - before["rows"] == 20
    assert after["batches"] - before["batches"] < 20 and after["max_batch_rows"] > 1


# -- bad input: OpenAI's error shape, a 4xx with a message, and the server keeps serving ---------
LONG = " ".join(["Paris is the capital of France."] * 60)  # > 256 tokens, the tiny model's context
BAD_INPUTS = [
    # (path, raw body, status, param, words in the message)
    ("/v1/completions", "{not json", 400, None, "not valid JSON"),
    ("/v1/completions", "[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", "", 400, None, "JSON object"),
    ("/v1/completions", {"prompt": "x"}, 400, "model", "missing required field 'model'"),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model", "model 'nope' does not exist"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "max_tokens": 0},
        400,
        "max_tokens",
        "at least 1",
    ),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "max_tokens": 65},
        400,
        "max_tokens",
        "--max-tokens",
    ),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "max_tokens": "5"},
        400,
        "max_tokens",
        "valid integer",
    ),
    ("/v1/completions", {"model": "svdecode", "prompt": LONG}, 400, "prompt", "over the limit of 256"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": LONG[:400], "max_tokens": 64},
        400,
        "prompt",
        "context is 256",
    ),
    ("/v1/completions", '{"model": "svdecode", "prompt": "x", "mu": NaN}', 400, "mu", "finite number"),
    ("/v1/completions", '{"model": "svdecode", "prompt": "x", "mu": 1e999}', 400, "mu", "finite number"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "alpha": 1.5},
        400,
        "alpha",
        "less than or equal to 1",
    ),
    ("/v1/completions", {"model": "svdecode:base", "prompt": "x", "mu": 1.0}, 400, "mu", "steered model"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "temperature": 3},
        400,
        "temperature",
        "less than or equal",
    ),
    ("/v1/completions", {"model": "svdecode", "prompt": "x", "top_p": 0}, 400, "top_p", "greater than 0"),
    ("/v1/completions", {"model": "svdecode", "prompt": "x", "n": 9}, 400, "n", "--max-batch of 8"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "logprobs": 2},
        400,
        "logprobs",
        "not supported",
    ),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "presence_penalty": 0.5},
        400,
        "presence_penalty",
        "not supported",
    ),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "temprature": 1},
        400,
        "temprature",
        "unknown field",
    ),
    ("/v1/completions", {"model": "svdecode", "prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {"model": "svdecode", "prompt": [1, 2]}, 400, "prompt", "token-id prompts"),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
        400,
        "stop",
        "at most 4",
    ),
    (
        "/v1/completions",
        {"model": "svdecode", "prompt": "x", "seed": 2**64},
        400,
        "seed",
        "less than or equal",
    ),
    ("/v1/chat/completions", {"model": "svdecode", "messages": []}, 400, "messages", "at least 1"),
    (
        "/v1/chat/completions",
        {"model": "svdecode", "messages": [{"role": "tool", "content": "x"}]},
        400,
        "messages.0.role",
        "'user'",
    ),
    (
        "/v1/chat/completions",
        {
            "model": "svdecode",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        400,
        "messages.0.content.type",
        "should be 'text'",
    ),
    (
        "/v1/chat/completions",
        {"model": "svdecode", "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
        400,
        "tools",
        "not supported",
    ),
    ("/v1/completions", "GET", 405, None, "Method Not Allowed"),
    ("/v1/nothing", {"model": "svdecode"}, 404, None, "Not Found"),
]


def test_bad_inputs_get_4xx_in_openai_shape_and_the_server_keeps_serving(served, client):
    url = served[0]
    for path, body, status, param, words in BAD_INPUTS:
        if body == "GET":
            r = httpx.get(url + path)
        else:
            content = body if isinstance(body, str) else json.dumps(body)
            r = httpx.post(url + path, content=content, headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert (r.status_code, err["param"]) == (status, param), (body, r.text)
        assert words in err["message"] and set(err) == {"message", "type", "param", "code"}, (body, r.text)
    r = httpx.post(url + "/v1/completions", content=json.dumps({"model": "svdecode", "prompt": "x" * 70000}))
    assert r.status_code == 413 and "65536 bytes" in r.json()["error"]["message"]
    chunked = httpx.post(
        url + "/v1/completions", content=(b"x" * 8192 for _ in range(9))
    )  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    with pytest.raises(openai.NotFoundError) as info:  # the official client reads the shape
        client.completions.create(model="gpt-4", prompt="x")
    assert info.value.code == "model_not_found"
    assert (
        client.completions.create(model="svdecode", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
    )


# -- limits, cancellation, shutdown -----------------------------------------------------------------
def test_client_disconnect_cancels_its_generation(served, client, slow_steps):
    url = served[0]
    before = health(url)["stats"].get("cancelled", 0)
    stream = client.completions.create(
        model="svdecode", prompt=PROMPT, max_tokens=64, temperature=0, stream=True
    )
    next(iter(stream))
    stream.close()
    t0 = time.monotonic()
    wait_for(lambda: health(url)["running"] == 0, what="the streamed generation to stop")
    assert time.monotonic() - t0 < 1.0  # 60+ more tokens would take ~2 s
    with pytest.raises(httpx.ReadTimeout):  # non-streamed: the client gives up after 0.3 s
        httpx.post(
            url + "/v1/completions",
            json={"model": "svdecode", "prompt": PROMPT, "max_tokens": 64},
            timeout=0.3,
        )
    t0 = time.monotonic()
    wait_for(lambda: health(url)["running"] == 0, what="the non-streamed generation to stop")
    assert time.monotonic() - t0 < 1.0
    assert health(url)["stats"]["cancelled"] - before == 2


def test_full_queue_gets_429_and_slow_requests_504(model, slow_steps):
    with running_server(model, max_batch=1, max_queue=1, max_tokens=64, request_timeout=1.0) as (
        url,
        _,
        _app,
    ):
        body = {"model": "svdecode", "prompt": PROMPT, "max_tokens": 64}
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=10)
            wait_for(lambda: health(url)["running"] == 1, what="the first request to run")
            second = pool.submit(httpx.post, url + "/v1/completions", json=body, timeout=10)
            wait_for(lambda: health(url)["queued"] == 1, what="the second request to queue")
            third = httpx.post(url + "/v1/completions", json=body)
            assert third.status_code == 429 and third.json()["error"]["code"] == "queue_full"
            assert third.headers["retry-after"] == "1"
            for fut in (first, second):
                r = fut.result()
                assert r.status_code == 504 and "--request-timeout" in r.json()["error"]["message"]
        ok = httpx.post(url + "/v1/completions", json={**body, "max_tokens": 3}, timeout=10)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_graceful_shutdown_finishes_the_in_flight_stream(model, slow_steps):
    with running_server(model, max_tokens=64) as (url, server, _app):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(
            model="svdecode", prompt=PROMPT, max_tokens=40, temperature=0, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        wait_for(lambda: not _up(url), what="the server to stop accepting connections")
        rest = list(chunks)  # ... while the in-flight stream goes on to its end
        assert rest[-1].choices[0].finish_reason == "length" and len(rest) > 10
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_cli_serve_api_key_and_sigterm(steered_dir, tmp_path):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "SVDECODE_API_KEY": "sekret", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "svdecode.cli",
        "serve",
        str(steered_dir),
        "--port",
        str(port),
        "--max-tokens",
        "64",
    ]
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), timeout=60, what="svdecode serve to start")
        no_key = httpx.get(url + "/v1/models")
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError, match="API key"):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0)
        stream = good.completions.create(
            model="svdecode", prompt=PROMPT, max_tokens=64, n=8, temperature=0, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        proc.send_signal(signal.SIGTERM)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        assert finish == ["length"] * 8  # the in-flight request finished after SIGTERM
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    # uvicorn's "Waiting for connections to close" shows only when the tiny model has not finished
    # the stream by the time the signal lands (a race in a subprocess); that an in-flight stream
    # runs to its end is tested deterministically in-process (the graceful-shutdown test above)
    text = log.read()
    assert "Finished server process" in text and "svdecode serve: terminated (SIGTERM)" in text


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health").status_code == 200
    except httpx.TransportError:  # refused, or accepted and then reset by a server shutting down
        return False
