"""Steered decoding inside vLLM equals svdecode's own, token for token (run by scripts/test_vllm.sh).

Needs the vLLM environment (.venv-vllm, scripts/setup_vllm.sh) and a calibrated LoRA adapter for
the default model ($SVDECODE_VLLM_ADAPTER). The reference decodes come from
``SteeredModel.generate`` in the main environment ($SVDECODE_REF_PYTHON, default .venv/bin/python:
the supported transformers, where vLLM's pins an older one), through tests/integrations/vllm_engine/reference.py.
One vLLM engine start and one reference run serve the whole module (each takes minutes here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vLLM tests run in .venv-vllm (bash scripts/test_vllm.sh)")

from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

from svdecode.integrations.vllm.offline import sampling, steered_llm  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
PROMPTS = [
    "Question: is the sky blue?\nAnswer:",
    "Passage: Water boils at 100 degrees.\nQuestion: does water boil at 50 degrees?\nAnswer:",
    "The capital of France is",
]
MAX_TOKENS = 12
# The served (calibrated) settings, two strengths that change the text, the two plain streams.
SETTINGS = {
    "calibrated": {},
    "mu=-40": {"mu": -40.0},
    "mu=20": {"mu": 20.0},
    "adapter": {"method": "adapted"},
    "base": {"method": "base"},
}
# fp32 through two implementations of one decoder (vLLM's and transformers'); the error grows with
# |mu|, which multiplies the streams' difference. Measured: 1.5e-5 at mu = 0 and for the plain
# streams, 7.6e-5 at mu = 20, 2.0e-4 at mu = -40.
def logprob_atol(mu: float) -> float:
    return 5e-5 + 1e-5 * abs(mu)


@pytest.fixture(scope="module")
def adapter() -> Path:
    path = Path(os.environ.get("SVDECODE_VLLM_ADAPTER", ROOT / "runs" / "vllm-boolq"))
    if not (path / "steering_config.json").is_file():
        pytest.fail(f"{path} is no calibrated adapter; scripts/test_vllm.sh builds one (SVDECODE_VLLM_ADAPTER)")
    return path


@pytest.fixture(scope="module")
def reference(adapter: Path) -> dict:
    python = os.environ.get("SVDECODE_REF_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    spec = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "settings": list(SETTINGS.values())}
    proc = subprocess.run(
        [python, str(ROOT / "tests" / "integrations" / "vllm_engine" / "reference.py"), str(adapter), json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        pytest.fail(f"the reference decode failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {"prompt_ids": out["prompt_ids"], "runs": dict(zip(SETTINGS, out["runs"], strict=True))}


@pytest.fixture(scope="module")
def llm(adapter: Path):
    engine = steered_llm(adapter)
    yield engine
    del engine


def _generate(llm, prompt_ids: list[list[int]], names: list[str]) -> dict[str, list]:
    """One ``generate`` call over every (setting, prompt) pair: a batch of mixed settings."""
    prompts, params = [], []
    for name in names:
        for ids in prompt_ids:
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(sampling(**SETTINGS[name], temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0))
    outs = iter(llm.generate(prompts, params, use_tqdm=False))
    result = {}
    for name in names:
        rows = []
        for _ in prompt_ids:
            o = next(outs).outputs[0]
            lps = [step[t].logprob for step, t in zip(o.logprobs, o.token_ids, strict=True)]
            rows.append({"tokens": list(o.token_ids), "logprobs": lps})
        result[name] = rows
    return result


@pytest.fixture(scope="module")
def mixed(llm, reference) -> dict[str, list]:
    return _generate(llm, reference["prompt_ids"], list(SETTINGS))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_greedy_tokens_equal_steered_model(mixed, reference, name):
    for got, want in zip(mixed[name], reference["runs"][name], strict=True):
        assert got["tokens"] == want["tokens"]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_logprobs_equal_within_fp32_tolerance(mixed, reference, name):
    for got, want in zip(mixed[name], reference["runs"][name], strict=True):
        assert len(got["logprobs"]) == len(want["logprobs"])
        diff = max(abs(a - b) for a, b in zip(got["logprobs"], want["logprobs"], strict=True))
        assert diff < logprob_atol(SETTINGS[name].get("mu", 0.0)), f"{name}: steered log-probs differ by {diff:.2e}"


def test_strengths_change_the_text(mixed, reference):
    """The premise of the exactness tests at mu != calibrated: those settings decode other tokens."""
    runs = reference["runs"]
    for name in ("mu=-40", "mu=20"):
        assert [r["tokens"] for r in runs[name]] != [r["tokens"] for r in runs["calibrated"]]
        assert [r["tokens"] for r in mixed[name]] != [r["tokens"] for r in mixed["calibrated"]]


def test_base_and_adapted_streams_not_swapped(mixed, reference):
    """The base stream must be the model without the adapter, the adapted one with it: a swap (or
    both streams running the same weights) changes these tokens or log-probs."""
    runs = reference["runs"]
    assert [r["tokens"] for r in runs["base"]] != [r["tokens"] for r in runs["adapter"]]
    assert [r["tokens"] for r in mixed["base"]] == [r["tokens"] for r in runs["base"]]
    assert [r["tokens"] for r in mixed["adapter"]] == [r["tokens"] for r in runs["adapter"]]
    # Where both streams pick the same tokens, a swap still shows in the log-probs: the two
    # streams' differ by far more than test_logprobs_equal_within_fp32_tolerance allows.
    for b, a in zip(runs["base"], runs["adapter"], strict=True):
        same = 0
        while same < min(len(a["tokens"]), len(b["tokens"])) and a["tokens"][same] == b["tokens"][same]:
            same += 1
        gaps = [abs(x - y) for x, y in zip(b["logprobs"][:same], a["logprobs"][:same], strict=True)]
        assert all(gap > 2 * logprob_atol(0.0) for gap in gaps), gaps


def test_served_settings_alone_after_a_mixed_batch(llm, reference, mixed):
    """Per-request settings do not leak into later requests that carry none."""
    again = _generate(llm, reference["prompt_ids"], ["calibrated"])
    assert [r["tokens"] for r in again["calibrated"]] == [r["tokens"] for r in reference["runs"]["calibrated"]]


def test_bad_request_settings_are_refused(llm, reference):
    ids = TokensPrompt(prompt_token_ids=reference["prompt_ids"][0])
    for bad in ({"method": "nope"}, {"alpha": 2.0}, {"mu": float("nan")}):
        with pytest.raises((ValueError, VLLMValidationError), match="extra_args"):
            llm.generate([ids], [sampling(**bad, temperature=0.0, max_tokens=2)], use_tqdm=False)


if __name__ == "__main__":  # vLLM spawns workers: keep this module importable without side effects
    sys.exit(pytest.main([__file__, "-q"]))
