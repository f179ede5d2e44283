"""Steered generation with vLLM's offline ``LLM`` (the tests and benchmarks use it).

``steered_llm(adapter_dir)`` starts vLLM on the folder :func:`~svdecode.integrations.vllm.prepare.prepare`
writes, with the per-request logits processor; ``sampling(...)`` builds ``SamplingParams`` that
select the steered model (default), its ``mu`` / ``alpha``, the plain adapter or the base. Scripts
that call ``steered_llm`` need the ``if __name__ == "__main__":`` guard: vLLM spawns workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vllm import LLM, SamplingParams

from svdecode.integrations.vllm.logits import KEY, RequestSteering
from svdecode.integrations.vllm.plugin import register
from svdecode.integrations.vllm.prepare import prepare

# An explicit KV cache size: on the CPU backend vLLM otherwise reserves a fraction of all RAM
# (gpu_memory_utilization, 0.92 by default). 512 MiB holds ~5.7k tokens of both streams of the
# default model (30 layers x K,V x 3 heads x 64 x fp32 = 46 KB a token a stream).
DEFAULTS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_memory_bytes": 1 << 29}


def steered_llm(
    adapter_dir: str | Path,
    base: str | None = None,
    mu: float | None = None,
    alpha: float | None = None,
    **llm_kwargs: Any,
) -> LLM:
    """A vLLM ``LLM`` serving ``adapter_dir`` steered (``llm_kwargs`` override :data:`DEFAULTS`)."""
    register()  # this process; the entry point registers it in vLLM's workers
    folder = prepare(adapter_dir, base=base, mu=mu, alpha=alpha)
    return LLM(model=str(folder), logits_processors=[RequestSteering], **{**DEFAULTS, **llm_kwargs})


def sampling(method: str | None = None, mu: float | None = None, alpha: float | None = None, **kw: Any) -> SamplingParams:
    """``SamplingParams(**kw)`` with svdecode's per-request settings (None: the served ones)."""
    extra = {k: v for k, v in (("method", method), ("mu", mu), ("alpha", alpha)) if v is not None}
    if extra:
        kw["extra_args"] = {**kw.get("extra_args", {}), KEY: extra}
    return SamplingParams(**kw)
