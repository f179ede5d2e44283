"""``svdecode serve ADAPTER_DIR``: its flags and what it runs (FastAPI is imported only here)."""

from __future__ import annotations

import argparse
import os

from svdecode import checks

API_KEY_ENV = "SVDECODE_API_KEY"


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _checked(rule: checks.Rule | None):
    """An argparse type: a number within ``rule``, or (None) a steering strength the fp32 math can
    apply; argparse names the flag in the error."""

    def parse(text: str) -> int | float:
        try:
            return checks.parse(text, rule) if rule else checks.check_strength(float(text))
        except ValueError as err:  # float("abc"), a number out of range, InputError
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from svdecode.model.loading import DTYPE_NAMES

    p.add_argument("adapter_dir", help="a steered model directory (svdecode calibrate/run) or a PEFT adapter")
    p.add_argument(
        "--engine",
        default="svdecode",
        choices=("svdecode", "vllm"),
        help="svdecode (default: transformers, micro-batches) or vllm (continuous batching; needs "
        ".venv-vllm from scripts/setup_vllm.sh)",
    )
    m = p.add_argument_group("model")
    m.add_argument("--base", default=None, help="base model (default: the one the adapter records)")
    m.add_argument("--dtype", default="float32", type=str.lower, choices=DTYPE_NAMES)
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto")
    m.add_argument(
        "--mu",
        type=_checked(None),
        default=None,
        help="default mu of the steered model (else the calibrated one)",
    )
    m.add_argument(
        "--alpha",
        type=_checked(checks.UNIT_INTERVAL),
        default=None,
        help="default confidence-mask alpha of the steered model",
    )
    m.add_argument(
        "--model-name",
        default="svdecode",
        help="model id of the steered model; NAME:adapter and NAME:base are the others",
    )
    v = p.add_argument_group("vllm engine")
    v.add_argument("--max-model-len", type=_positive(int), default=2048, help="tokens of prompt + output")
    v.add_argument("--kv-cache-mib", type=_positive(int), default=1024, help="KV cache of both streams")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    n.add_argument("--port", type=_checked(checks.Rule("int", lo=1, hi=65535)), default=8000)
    n.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (or set ${API_KEY_ENV})"
    )
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-batch", type=_positive(int), default=16, help="sequences per forward pass")
    lim.add_argument("--max-queue", type=_positive(int), default=128, help="waiting requests; more get 429")
    lim.add_argument(
        "--max-tokens", type=_positive(int), default=512, help="largest max_tokens a request may ask"
    )
    lim.add_argument(
        "--max-prompt-tokens", type=_positive(int), default=None, help="default: the model's context"
    )
    lim.add_argument(
        "--request-timeout", type=_positive(float), default=300.0, help="seconds, queueing included"
    )
    lim.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    lim.add_argument("--max-body-bytes", type=_positive(int), default=1 << 20)
    lim.add_argument(
        "--shutdown-timeout",
        type=_positive(float),
        default=30.0,
        help="on SIGTERM, seconds to finish in-flight requests",
    )


def run_serve(ns: argparse.Namespace) -> int:
    try:
        from svdecode.integrations.server.app import ServerSettings, serve
    except ImportError as err:
        raise SystemExit(
            f"svdecode serve needs the 'serve' extra: pip install 'svdecode[serve]' ({err})"
        ) from err
    batcher = None
    if ns.engine == "vllm":
        model, batcher = _vllm(ns)
    else:
        from svdecode.integrations.server.engine import load_model

        model = load_model(ns.adapter_dir, base=ns.base, dtype=ns.dtype, device=ns.device)
        model.steering.override(mu=ns.mu, alpha=ns.alpha)
    settings = ServerSettings(
        model_name=ns.model_name,
        max_batch=ns.max_batch,
        max_queue=ns.max_queue,
        max_tokens=ns.max_tokens,
        max_prompt_tokens=ns.max_prompt_tokens,
        request_timeout=ns.request_timeout,
        batch_wait_ms=max(0.0, ns.batch_wait_ms),
        max_body_bytes=ns.max_body_bytes,
        api_key=ns.api_key or os.environ.get(API_KEY_ENV) or None,
        shutdown_timeout=ns.shutdown_timeout,
    )
    serve(model, settings, ns.host, ns.port, batcher)
    return 0


def _vllm(ns: argparse.Namespace):
    try:
        from svdecode.integrations.vllm.serve import build
    except ImportError as err:
        raise SystemExit(
            f"--engine vllm needs vLLM: build .venv-vllm with scripts/setup_vllm.sh and run its svdecode ({err})"
        ) from err
    if ns.device not in (None, "cpu", "cuda"):
        raise SystemExit("--engine vllm places the model itself: --device takes cpu or cuda only")
    dtype = "float32" if ns.dtype == "auto" else ns.dtype
    return build(
        ns.adapter_dir, ns.base, ns.mu, ns.alpha, ns.max_batch, ns.max_queue, ns.max_model_len, ns.kv_cache_mib, dtype
    )
