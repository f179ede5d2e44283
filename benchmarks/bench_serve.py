"""Load test of ``svdecode serve``: N concurrent clients against the same work one request at a time.

Starts ``svdecode serve`` as a subprocess on a free loopback port with the default model and an
adapter (``--steered DIR``, e.g. from ``svdecode warmstart`` + ``svdecode calibrate``; without it a
seeded random LoRA, r=8, alpha=16 on q_proj,v_proj with mu = -1, is built in a temporary folder),
then drives it with the official ``openai`` client:

  1. concurrent: ``--clients`` clients (default 50), each sending ``--requests`` requests in turn,
     all starting together;
  2. sequential: the same requests, one at a time.

Greedy decoding (temperature 0), ``--max-tokens`` new tokens per request, distinct prompts; the
requests cycle through ``--models`` (default: the steered model only). Prints p50/p95/max latency,
generated tokens/s (from the responses' ``usage``), failures, the batched/sequential throughput
ratio and the server's batch statistics.

``--engine vllm`` serves with vLLM instead (``svdecode serve --engine vllm``, run by
``.venv-vllm/bin/python`` unless ``--server-python`` says otherwise; scripts/setup_vllm.sh builds it).

Usage: python benchmarks/bench_serve.py [--steered DIR] [--clients 50] [--max-tokens 32]
       [--max-batch 16] [--models svdecode,svdecode:adapter,svdecode:base] [--engine vllm]
       [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai

TOPICS = [
    "the printing press", "photosynthesis", "the French revolution", "volcanoes", "the immune system",
    "black holes", "the Roman empire", "plate tectonics", "jazz music", "the water cycle",
]  # fmt: skip
TARGETS = {"failures": 0, "ratio": 3.0}


def build_adapter(out: Path, seed: int = 0, mu: float = -1.0) -> Path:
    """Default model + a seeded random LoRA saved as a steered model directory."""
    import torch
    from peft import LoraConfig, get_peft_model

    from svdecode.model.loading import load_base
    from svdecode.model.steered_model import SteeredModel

    base, tok = load_base("default")
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft initialises B to 0 (adapter = identity); make it do something
            torch.nn.init.normal_(param, std=0.05)
    SteeredModel.from_peft(peft_model.eval(), tok, mu=mu).save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(steered: Path, port: int, args: argparse.Namespace, log_path: Path) -> subprocess.Popen:
    python = args.server_python or (".venv-vllm/bin/python" if args.engine == "vllm" else sys.executable)
    cmd = [python, "-m", "svdecode.cli", "serve", str(steered), "--port", str(port), "--engine", args.engine]
    cmd += ["--max-batch", str(args.max_batch), "--max-queue", str(max(128, args.clients * 2))]
    cmd += ["--max-tokens", str(max(args.max_tokens, 16)), "--request-timeout", "3600"]
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 600  # vLLM's engine start takes 1-2 min on 2 cores
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"svdecode serve exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url).status_code == 200:
                return proc
        except httpx.ConnectError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"svdecode serve did not start within 600 s; see {log_path}")


def workload(args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """Per client, its requests (distinct prompts, models in turn)."""
    models = args.models.split(",")
    jobs, k = [], 0
    for _ in range(args.clients):
        mine = []
        for _ in range(args.requests):
            topic = TOPICS[k % len(TOPICS)]
            prompt = f"Request {k}. Write two sentences about {topic}."
            mine.append({"model": models[k % len(models)], "prompt": prompt})
            k += 1
        jobs.append(mine)
    return jobs


async def one(client: openai.AsyncOpenAI, job: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = await client.completions.create(**job, max_tokens=max_tokens, temperature=0)
        return {"ok": True, "latency": time.perf_counter() - t0, "tokens": r.usage.completion_tokens}
    except openai.APIError as err:
        return {"ok": False, "latency": time.perf_counter() - t0, "tokens": 0, "error": repr(err)[:200]}


async def run_clients(url: str, jobs: list[list[dict[str, Any]]], max_tokens: int, concurrent: bool):
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)

    async def client_loop(mine):
        return [await one(client, job, max_tokens) for job in mine]

    t0 = time.perf_counter()
    if concurrent:
        results = [r for rs in await asyncio.gather(*(client_loop(m) for m in jobs)) for r in rs]
    else:
        results = await client_loop([job for mine in jobs for job in mine])
    wall = time.perf_counter() - t0
    await client.close()
    return summarize(results, wall)


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    lat = sorted(r["latency"] for r in results if r["ok"])
    tokens = sum(r["tokens"] for r in results)
    q = statistics.quantiles(lat, n=20, method="inclusive") if len(lat) > 1 else lat * 19
    return {
        "requests": len(results),
        "failures": sum(not r["ok"] for r in results),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:5],
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p95_s": q[18] if lat else float("nan"),
        "max_s": lat[-1] if lat else float("nan"),
    }


def report(res: dict[str, Any]) -> None:
    print(f"command : {res['command']}")
    print(f"setup   : {res['setup']}")
    head = f"{'mode':<11} {'requests':>8} {'failures':>8} {'wall s':>8} {'tokens':>7} {'tok/s':>7} "
    print("\n" + head + f"{'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    print("-" * (len(head) + 24))
    for mode in ("concurrent", "sequential"):
        r = res[mode]
        print(
            f"{mode:<11} {r['requests']:>8} {r['failures']:>8} {r['wall_s']:>8.1f} {r['tokens']:>7} "
            f"{r['tokens_per_s']:>7.1f} {r['p50_s']:>7.2f} {r['p95_s']:>7.2f} {r['max_s']:>7.2f}"
        )
        for err in r["errors"]:
            print(f"  error: {err}")
    ratio, fails = res["ratio"], res["concurrent"]["failures"]
    ok = "ok" if ratio >= TARGETS["ratio"] else "MISSED"
    print(f"\nbatched / sequential throughput: {ratio:.2f} x (target >= {TARGETS['ratio']:g}: {ok})")
    print(
        f"failures at {res['clients']} concurrent clients: {fails} (target 0: {'ok' if fails == 0 else 'MISSED'})"
    )
    print(f"server batches: {res['server_stats']}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--steered", type=Path, default=None, help="a steered model directory (default: build one)"
    )
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=1, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    p.add_argument("--models", default="svdecode", help="comma-separated model ids, used in turn")
    p.add_argument("--engine", default="svdecode", choices=("svdecode", "vllm"), help="the server's --engine")
    p.add_argument("--server-python", default=None, help="python that runs the server (see --engine)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        steered = args.steered or build_adapter(Path(tmp) / "steered")
        port, log_path = free_port(), Path(tmp) / "server.log"
        proc = start_server(steered, port, args, log_path)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            jobs = workload(args)
            asyncio.run(run_clients(url, [jobs[0][:1]], args.max_tokens, False))  # warm-up
            res: dict[str, Any] = {"concurrent": asyncio.run(run_clients(url, jobs, args.max_tokens, True))}
            res["server_stats"] = httpx.get(url.removesuffix("/v1") + "/health").json()["stats"]
            res["sequential"] = asyncio.run(run_clients(url, jobs, args.max_tokens, False))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    res["clients"] = args.clients
    res["command"] = shlex.join(["python", *sys.argv])
    res["setup"] = (
        f"{'given ' + str(args.steered) if args.steered else 'default model + seeded random LoRA (mu=-1)'}; "
        f"{args.clients} clients x {args.requests} request(s), max_tokens={args.max_tokens}, greedy, "
        f"models {args.models}, server --engine {args.engine} --max-batch {args.max_batch}; {os.cpu_count()} CPUs"
    )
    res["ratio"] = res["concurrent"]["tokens_per_s"] / res["sequential"]["tokens_per_s"]
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
