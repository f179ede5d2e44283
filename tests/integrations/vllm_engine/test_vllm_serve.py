"""``svdecode serve --engine vllm``: the same OpenAI API, greedy completions equal to
``svdecode generate --steered DIR --json`` (run by scripts/test_vllm.sh, in .venv-vllm)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vLLM tests run in .venv-vllm (bash scripts/test_vllm.sh)")

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = [
    "Question: is the sky blue?\nAnswer:",
    "Passage: Water boils at 100 degrees.\nQuestion: does water boil at 50 degrees?\nAnswer:",
    "Write one sentence about volcanoes.",
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def adapter() -> Path:
    path = Path(os.environ.get("SVDECODE_VLLM_ADAPTER", ROOT / "runs" / "vllm-boolq"))
    if not (path / "steering_config.json").is_file():
        pytest.fail(f"{path} is no calibrated adapter; scripts/test_vllm.sh builds one (SVDECODE_VLLM_ADAPTER)")
    return path


@pytest.fixture(scope="module")
def server(adapter, tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = [sys.executable, "-m", "svdecode.cli", "serve", "--engine", "vllm", str(adapter), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            pytest.fail(f"svdecode serve --engine vllm exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start in 600 s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=120)


@pytest.fixture(scope="module")
def reference(adapter) -> list[str]:
    python = os.environ.get("SVDECODE_REF_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    cmd = [python, "-m", "svdecode.cli", "generate", "--steered", str(adapter), "--json", "--batch-size", "1"]
    cmd += ["--max-new-tokens", str(MAX_TOKENS)] + [a for p in PROMPTS for a in ("--prompt", p)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        pytest.fail(f"svdecode generate failed:\n{proc.stderr[-2000:]}")
    return [json.loads(line)["completion"] for line in proc.stdout.splitlines() if line.startswith("{")]


def _complete(url: str, prompt: str, **kw) -> httpx.Response:
    body = {"model": "svdecode", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, **kw}
    return httpx.post(url + "/v1/completions", json=body, timeout=300)


def test_health_and_the_three_models(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok"
    ids = [m["id"] for m in httpx.get(server + "/v1/models").json()["data"]]
    assert ids == ["svdecode", "svdecode:adapter", "svdecode:base"]


def test_greedy_completions_equal_svdecode_generate(server, reference):
    got = [_complete(server, p).json()["choices"][0]["text"] for p in PROMPTS]
    assert got == reference


def test_streaming_gives_the_same_text(server, reference):
    body = {"model": "svdecode", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    text = ""
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += json.loads(line[6:])["choices"][0]["text"]
    assert text == reference[0]


def test_chat_and_the_plain_streams(server):
    chat = {"model": "svdecode:base", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}
    r = httpx.post(server + "/v1/chat/completions", json=chat, timeout=300)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    base = _complete(server, PROMPTS[0], model="svdecode:base").json()["choices"][0]["text"]
    adapter = _complete(server, PROMPTS[0], model="svdecode:adapter").json()["choices"][0]["text"]
    assert base != adapter  # the two plain streams are different models (see test_vllm_engine)


def test_validation_is_the_default_engines(server):
    r = _complete(server, PROMPTS[0], model="svdecode:base", mu=1.0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "mu"
    assert _complete(server, PROMPTS[0], model="nope").status_code == 404
    assert _complete(server, PROMPTS[0], mu=-40.0).status_code == 200  # per-request strength
