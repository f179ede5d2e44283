"""Schema-driven fuzz of the OpenAI-compatible server: schemathesis turns the app's own OpenAPI
schema (FastAPI's, from the pydantic request models) into hypothesis strategies of requests that
fit it (positive) and that break it (negative); each goes to a real uvicorn server with the tiny
LoRA model. No answer is a 5xx, every error has OpenAI's shape, and the server still answers
/health and a normal request afterwards. The examples per endpoint follow the hypothesis profile
(conftest: ``ci`` by default, ``deep`` in scripts/fuzz.sh)."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from test_server import SETTINGS, running_server, steered_dir  # noqa: F401 (a fixture)

from svdecode.integrations.server.engine import load_model

MODELS = [None, "svdecode", "svdecode:adapter", "svdecode:base"]
ENDPOINTS = ["/v1/completions", "/v1/chat/completions"]
TALLY: dict[str, dict[int, int]] = {}  # endpoint -> status -> count (printed by the deep run)
PARAMS: dict[str | None, int] = {}  # which field the 4xx answers named


@pytest.fixture(scope="module")
def fuzzed(steered_dir):  # noqa: F811
    with running_server(load_model(steered_dir), **SETTINGS) as (url, _, app):
        yield url, schemathesis.openapi.from_dict(app.openapi())


def _requests(schema, path: str) -> st.SearchStrategy:
    op = schema[path]["POST"]
    cases = st.one_of(op.as_strategy(generation_mode=GenerationMode.POSITIVE),
                      op.as_strategy(generation_mode=GenerationMode.NEGATIVE))  # fmt: skip
    # a real model id in most bodies, so that the fuzz reaches generation, not only the 404
    return st.tuples(cases, st.sampled_from(MODELS))


def _check_openai_error(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), err


def _send(url: str, case, model: str | None) -> httpx.Response:
    body = case.body
    if model is not None and isinstance(body, dict):
        body = {**body, "model": model}
    kw = (
        {"content": b""}
        if body is NOT_SET
        else {"content": body}
        if isinstance(body, (bytes, str))
        else {"json": body}
    )
    headers = {"Content-Type": "application/json"} if "json" in kw or case.media_type is None else {
        "Content-Type": case.media_type}  # fmt: skip
    return httpx.post(url + case.path, headers=headers, timeout=60, **kw)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_fuzzed_requests_never_get_a_5xx_and_errors_have_openais_shape(fuzzed, path):
    url, schema = fuzzed
    tally = TALLY.setdefault(path, {})

    @settings(max_examples=max(10, settings().max_examples))
    @given(_requests(schema, path))
    def one(request) -> None:
        case, model = request
        response = _send(url, case, model)
        tally[response.status_code] = tally.get(response.status_code, 0) + 1
        body = response.text
        sent = "(no body)" if case.body is NOT_SET else json.dumps(case.body, default=str)[:300]
        assert response.status_code < 500, f"{response.status_code} for {sent}: {body}"
        if response.status_code >= 400:
            _check_openai_error(response)
            param = response.json()["error"]["param"]
            PARAMS[param] = PARAMS.get(param, 0) + 1
        elif response.headers.get("content-type", "").startswith("application/json"):
            assert "choices" in response.json()
        else:  # a stream: server-sent events ending with [DONE], or an error event
            assert body.rstrip().endswith("data: [DONE]") or '"error"' in body, body[-300:]

    one()
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    ok = httpx.post(url + "/v1/completions", json={"model": "svdecode", "prompt": "Paris is", "max_tokens": 2,
                                                    "temperature": 0}, timeout=60)  # fmt: skip
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] is not None
    print(f"\n{path}: {sum(tally.values())} requests, status counts {dict(sorted(tally.items()))}; "
          f"4xx named {dict(sorted(PARAMS.items(), key=lambda kv: -kv[1])[:8])}")  # fmt: skip


def test_a_strength_beyond_fp32_is_a_400_not_a_500(fuzzed):
    url, _ = fuzzed
    for mu in (1e39, 1e300, -1e31):
        r = httpx.post(url + "/v1/completions", json={"model": "svdecode", "prompt": "Paris is", "max_tokens": 2,
                                                       "mu": mu}, timeout=60)  # fmt: skip
        assert r.status_code == 400, r.text
        _check_openai_error(r)
        assert r.json()["error"]["param"] == "mu" and "fp32" in r.json()["error"]["message"]


def test_a_tiny_temperature_samples_like_greedy_not_a_500(fuzzed):
    """Found by the deep fuzz: temperature 3.8e-62 overflowed the warped logits to inf (NaN
    probabilities, HTTP 500). It is a valid temperature; it now samples the top token."""
    url, _ = fuzzed
    body = {"model": "svdecode", "prompt": "Paris is", "max_tokens": 4, "seed": 1}
    greedy = httpx.post(url + "/v1/completions", json={**body, "temperature": 0}, timeout=60)
    for t in (3.8e-62, 5e-324, 1e-30):
        r = httpx.post(url + "/v1/completions", json={**body, "temperature": t}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
