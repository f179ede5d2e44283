"""Speed and memory of steered decoding (SVDecode) against plain adapted decoding, on CPU.

Measures, in one run:
  1. decode throughput (greedy, fixed number of new tokens) of (a) plain adapted decoding
     ``peft_model.generate``, (b) ``SteeredModel.generate`` with base and adapted logits from one
     mixed-adapter forward pass, (c) the same with two sequential passes (``mixed_batch=False``);
  2. the steering math alone (``steer_logits`` on [8, 152064] fp32 logits): time and extra memory;
  3. peak RSS of plain vs steered decoding, each in a fresh subprocess;
  4. peak RSS of steered and plain decoding with fp32 and with bf16 weights (CPU): the steering
     math is fp32, but nothing may upcast the model, so bf16 steered must stay near bf16 plain.

Usage: python benchmarks/bench_decode.py [--quick] [--json out.json]
       [--dtype bfloat16] [--device cuda] [--batches 1 8 32]   (throughput in another dtype/device)
       [--model DIR --random-weights]   (DIR's config and tokenizer, random weights: see gpu_decode.sh)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TARGETS = {"ratio_b1": 0.6, "ratio_b8": 0.85, "steer_ms": 10.0, "rss_ratio": 1.15}
MU, ALPHA = -1.0, 0.1  # any mu: the cost of steering does not depend on its value
PROMPT_TOKENS = 30
STEER_SHAPE = (8, 152064)  # Qwen2.5 vocabulary, the paper's models
# A fixed glibc mmap threshold: every large tensor gets fresh pages and gives them back when freed,
# so the high-water mark sees each temporary instead of recycled heap memory.
STEER_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a screw press adapted from wine making. "
    "Within a few decades printers had set up shops in more than two hundred European cities, "
    "and the price of books fell so sharply that reading spread from monasteries and courts to "
    "merchants, artisans and students. Scholars argue about how much the new technology caused "
    "the Reformation, the scientific revolution and the rise of vernacular literature, but few "
    "doubt that it changed how knowledge was stored, copied, checked and shared across Europe."
)


# -- environment -----------------------------------------------------------------------------------
def proc_status_kb(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in KiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else -1


def cpu_name() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    import peft
    import transformers

    return {
        "command": shlex.join(["python", *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }


# -- model and inputs ------------------------------------------------------------------------------
def random_base(folder: str, seed: int, dtype: str, device: str | None):
    """A model with the folder's config.json and seeded random weights, and the folder's tokenizer.

    Throughput does not depend on the weights' values (every run decodes exactly ``new_tokens``), so
    a GPU run can measure a model whose weights are too large to carry to the machine."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from svdecode.model.loading import load_tokenizer, resolve_device, resolve_dtype

    torch.manual_seed(seed)
    dev = resolve_device(device) or torch.device("cpu")
    with dev:  # initialise on the device: a CPU init of a 1.5B model takes a minute
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=resolve_dtype(dtype))
    return model.eval(), load_tokenizer(folder)


def build_peft_model(
    model_name: str, seed: int, dtype: str = "float32", device: str | None = None, random: bool = False
):
    """The base model with a seeded, non-trivial LoRA adapter (r=8, alpha=16, q_proj/v_proj)."""
    from peft import LoraConfig, get_peft_model

    from svdecode.model.loading import load_base

    if random:
        base, tok = random_base(model_name, seed, dtype, device)
    else:
        base, tok = load_base(model_name, dtype=dtype, device=device)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(base, cfg)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft initialises B to 0 (adapter = identity); make it do something
            torch.nn.init.normal_(param, std=0.05)
    peft_model.to(base.device)
    return peft_model.eval(), tok


def make_inputs(tok, batch: int) -> dict[str, torch.Tensor]:
    """``batch`` different prompts of exactly PROMPT_TOKENS tokens (no padding)."""
    ids = tok(TEXT, return_tensors="pt").input_ids[0]
    rows = [ids[i * 7 : i * 7 + PROMPT_TOKENS] for i in range(batch)]
    input_ids = torch.stack(rows)
    assert input_ids.shape == (batch, PROMPT_TOKENS), "TEXT too short for this batch size"
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoders(peft_model, tok) -> dict[str, Callable[..., torch.Tensor]]:
    """The three ways to decode, each a ``generate``-like callable."""
    from svdecode.model.kv_cache import new_cache
    from svdecode.model.steered_model import SteeredModel
    from svdecode.model.streams import cache_kwargs

    steered = SteeredModel.from_peft(peft_model, tok, mu=MU, alpha=ALPHA)
    two_pass = SteeredModel.from_peft(peft_model, tok, mixed_batch=False, mu=MU, alpha=ALPHA)
    assert steered.streams.kind == "lora-mixed-batch", steered.streams.kind
    assert two_pass.streams.kind == "two-pass-adapter-toggle", two_pass.streams.kind
    base = peft_model.get_base_model()

    def plain_growing(**kwargs: Any) -> torch.Tensor:
        # plain decoding with the KV-cache layout the steered streams use (svdecode.model.streams.GrowingLayer),
        # to separate the cost of steering from the cheaper cache
        return peft_model.generate(**kwargs, **cache_kwargs(new_cache(base)))

    return {
        "plain": peft_model.generate,
        "plain_growing": plain_growing,
        "steered": steered.generate,
        "two_pass": two_pass.generate,
    }


def decode(
    fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], new_tokens: int, pad: int
) -> float:
    """Seconds for one greedy generation of exactly ``new_tokens`` tokens."""
    device = inputs["input_ids"].device
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    synchronize(device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == PROMPT_TOKENS + new_tokens, tuple(out.shape)
    return elapsed


# -- 1. decode throughput --------------------------------------------------------------------------
def bench_throughput(
    peft_model, tok, batches: list[int], new_tokens: int, repeats: int
) -> list[dict[str, Any]]:
    """Tokens/s per decoder and batch size: one warm-up, then the median of ``repeats`` runs.

    The decoders take turns within each repeat, so slow drifts of machine load hit all alike.
    """
    fns = decoders(peft_model, tok)
    rows = []
    for batch in batches:
        inputs = to_device(make_inputs(tok, batch), peft_model.device)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():  # warm-up
            decode(fn, inputs, min(new_tokens, 8), tok.pad_token_id)
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(decode(fn, inputs, new_tokens, tok.pad_token_id))
        row: dict[str, Any] = {"batch": batch, "new_tokens": new_tokens, "repeats": repeats}
        for name, ts in times.items():
            row[f"{name}_s"] = ts
            row[f"{name}_tok_s"] = batch * new_tokens / statistics.median(ts)
            row[f"{name}_tok_s_best"] = batch * new_tokens / min(ts)
        row["ratio_steered"] = row["steered_tok_s"] / row["plain_tok_s"]
        row["ratio_two_pass"] = row["two_pass_tok_s"] / row["plain_tok_s"]
        row["ratio_steered_vs_growing"] = row["steered_tok_s"] / row["plain_growing_tok_s"]
        # each repeat's runs are adjacent in time: their ratios are robust to slow machine drift
        for name in ("steered", "two_pass"):
            paired = [p / s for p, s in zip(times["plain"], times[name], strict=True)]
            row[f"ratio_{name}_paired"] = statistics.median(paired)
        rows.append(row)
    return rows


def bench_matmul(base, calls: int = 30) -> dict[str, Any]:
    """Time of F.linear with the model's weight shapes for M = 1, 2, 8, 16 input rows: steering
    doubles M (base and adapted rows), and on a CPU whose small-M kernels are compute-bound
    that doubles the cost at batch 1 while it is nearly free at batch 8."""
    import torch.nn.functional as F

    rows = [1, 2, 8, 16]
    layer = base.model.layers[0]
    weights = [layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight, base.get_output_embeddings().weight]
    out = []
    for w in weights:
        ts = []
        for m in rows:
            x = torch.randn(m, w.shape[1])
            F.linear(x, w)
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                F.linear(x, w)
                samples.append(time.perf_counter() - start)
            ts.append(1e3 * statistics.median(samples))
        out.append({"shape": list(w.shape), "ms": ts})
    return {"rows": rows, "calls": calls, "weights": out}


# -- 2. steering math ------------------------------------------------------------------------------
def random_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z_phi = torch.randn(STEER_SHAPE, generator=gen) * 3
    return z_phi, z_phi + torch.randn(STEER_SHAPE, generator=gen)


def bench_steer_time(calls: int, device: torch.device | None = None) -> dict[str, Any]:
    from svdecode.steering import steer_logits

    device = device or torch.device("cpu")
    z_phi, z_theta = (z.to(device) for z in random_logits())
    for _ in range(3):
        steer_logits(z_phi, z_theta, MU, alpha=ALPHA)
    times = []
    for _ in range(calls):
        synchronize(device)
        start = time.perf_counter()
        steer_logits(z_phi, z_theta, MU, alpha=ALPHA)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "shape": list(STEER_SHAPE),
        "calls": calls,
        "device": str(device),
        "median_ms": 1e3 * statistics.median(times),
    }


def child_steer_memory() -> dict[str, Any]:
    """In a fresh process: peak RSS growth of one ``steer_logits`` call beyond its inputs.

    The high-water mark is reset through /proc/self/clear_refs just before the call, so the
    growth counts every temporary and the output, not the import of torch.
    """
    from svdecode.steering import steer_logits

    z_phi, z_theta = random_logits()
    steer_logits(z_phi[:1, :64], z_theta[:1, :64], MU, alpha=ALPHA)  # load kernels, not memory
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_kb("VmRSS")
    out = steer_logits(z_phi, z_theta, MU, alpha=ALPHA)
    extra = (proc_status_kb("VmHWM") - before) * 1024
    del out
    return {"extra_bytes": extra, "bv_fp32_bytes": math.prod(STEER_SHAPE) * 4}


# -- 3. peak RSS -----------------------------------------------------------------------------------
def child_decode_rss(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: load, warm up, decode once with one decoder, report the RSS high-water mark.

    The 1-token warm-up faults in every weight page (safetensors loads lazily), so ``ready``
    is the resident model and ``peak - ready`` what decoding itself adds. The high-water mark is
    reset at ``ready``: loading in bf16 converts the fp32 checkpoint and peaks above the resident
    model, which is not what decoding costs.
    """
    peft_model, tok = build_peft_model(args.model, args.seed, args.dtype, random=args.random_weights)
    fn = decoders(peft_model, tok)[args.child]
    decode(fn, make_inputs(tok, 1), 1, tok.pad_token_id)
    ready = proc_status_kb("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")
    seconds = decode(fn, make_inputs(tok, args.rss_batch), args.new_tokens, tok.pad_token_id)
    return {"ready_bytes": ready, "peak_bytes": proc_status_kb("VmHWM") * 1024, "seconds": seconds}


def run_child(
    args: argparse.Namespace, child: str, env: dict[str, str] | None = None, dtype: str = "float32"
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", child, "--model", args.model, "--seed", str(args.seed)]
    cmd += ["--dtype", dtype]
    cmd += ["--new-tokens", str(args.new_tokens), "--rss-batch", str(args.rss_batch)]
    cmd += ["--threads", str(torch.get_num_threads())] + (["--random-weights"] if args.random_weights else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ | (env or {}))
    if proc.returncode != 0:
        raise RuntimeError(f"child {child!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(args: argparse.Namespace, dtype: str = "float32") -> dict[str, Any]:
    res = {name: run_child(args, name, dtype=dtype) for name in ("plain", "steered")}
    res["batch"], res["new_tokens"], res["dtype"] = args.rss_batch, args.new_tokens, dtype
    res["ratio"] = res["steered"]["peak_bytes"] / res["plain"]["peak_bytes"]
    return res


# -- report ----------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report_throughput(res: dict[str, Any]) -> None:
    env = res["env"]
    print(f"command : {env['command']}")
    print(
        f"versions: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, ",
        end="",
    )
    print(f"peft {env['peft']}")
    print(f"cpu     : {env['cpu']}, torch threads {env['threads']}")
    print(
        f"model   : {res['model']} + LoRA r=8 alpha=16 on q_proj,v_proj; {PROMPT_TOKENS}-token prompts, greedy"
    )

    print("\n1. Decode throughput, tokens/s (median of repeats after one warm-up;")
    print("   paired = median over repeats of plain time / steered time, runs adjacent in time)")
    head = (
        f"{'batch':>5} {'tokens':>6} {'reps':>4} | {'plain':>7} {'plain*':>7} {'steered':>7} {'2-pass':>7} | "
        f"{'steered/plain':>13} {'paired':>6} {'steered/plain*':>14} {'2-pass/plain':>12} | target"
    )
    print(head + "\n" + "-" * len(head))
    for row in res["throughput"]:
        target = {1: TARGETS["ratio_b1"], 8: TARGETS["ratio_b8"]}.get(row["batch"])
        mark = f">= {target:.2f} {verdict(row['ratio_steered'] >= target)}" if target else "-"
        print(
            f"{row['batch']:>5} {row['new_tokens']:>6} {row['repeats']:>4} | {row['plain_tok_s']:>7.1f} "
            f"{row['plain_growing_tok_s']:>7.1f} {row['steered_tok_s']:>7.1f} {row['two_pass_tok_s']:>7.1f} | "
            f"{row['ratio_steered']:>13.3f} {row['ratio_steered_paired']:>6.3f} "
            f"{row['ratio_steered_vs_growing']:>14.3f} {row['ratio_two_pass']:>12.3f} | {mark}"
        )
    print(
        "   plain* = plain decoding with the steered streams' KV cache (GrowingLayer instead of DynamicLayer)"
    )


def report(res: dict[str, Any]) -> None:
    mib = 2**20
    report_throughput(res)
    mm = res["matmul"]
    print(f"\n   Why batch 1 is hard here: one linear layer with M input rows, ms (median of {mm['calls']})")
    print(f"   {'weight':>12} | " + " ".join(f"{'M=' + str(m):>7}" for m in mm["rows"]) + " | M=2 / M=1")
    for w in mm["weights"]:
        ts = w["ms"]
        print(
            f"   {w['shape'][0]:>5}x{w['shape'][1]:<6} | "
            + " ".join(f"{t:>7.3f}" for t in ts)
            + f" | {ts[1] / ts[0]:.2f}"
        )

    st = res["steer_math"]
    ms_ok = verdict(st["median_ms"] <= TARGETS["steer_ms"])
    print(f"\n2. Steering math: steer_logits on {st['shape']} fp32 logits")
    print(
        f"   time  : {st['median_ms']:.2f} ms/call (median of {st['calls']}), target <= {TARGETS['steer_ms']:.0f} ms {ms_ok}"
    )
    print(
        f"   memory: {st['extra_bytes'] / mib:.1f} MiB peak extra = {st['extra_bytes'] / st['bv_fp32_bytes']:.2f} "
        "x (B*V*4 bytes): O(B*V), no VxV Jacobian"
    )

    rss = res["rss"]
    print(f"\n3. Peak RSS, batch {rss['batch']}, {rss['new_tokens']} new tokens, one fresh process each")
    for name in ("plain", "steered"):
        r = rss[name]
        print(
            f"   {name:<8}: peak {r['peak_bytes'] / mib:6.1f} MiB (model resident {r['ready_bytes'] / mib:6.1f} MiB, "
            f"decoding +{(r['peak_bytes'] - r['ready_bytes']) / mib:.1f} MiB)"
        )
    rss_ok = verdict(rss["ratio"] <= TARGETS["rss_ratio"])
    print(f"   steered/plain peak: {rss['ratio']:.3f}, target <= {TARGETS['rss_ratio']:.2f} {rss_ok}")
    if "rss_bf16" in res:
        bf = res["rss_bf16"]
        print("\n4. Peak RSS with bf16 weights, same work (fp32 steering math; the model must stay bf16)")
        for name in ("plain", "steered"):
            r = bf[name]
            print(
                f"   {name:<8}: peak {r['peak_bytes'] / mib:6.1f} MiB (model resident {r['ready_bytes'] / mib:6.1f} MiB, "
                f"decoding +{(r['peak_bytes'] - r['ready_bytes']) / mib:.1f} MiB)"
            )
        print(
            f"   steered/plain peak (bf16): {bf['ratio']:.3f}; steered bf16 / steered fp32 peak: "
            f"{bf['steered']['peak_bytes'] / rss['steered']['peak_bytes']:.3f}"
        )
    print(f"\ntotal time: {res['seconds']:.0f} s")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 16 new tokens (a smoke test)")
    ap.add_argument("--model", default="default", help="base model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=None, help="default 64 (16 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--steer-calls", type=int, default=50)
    ap.add_argument("--rss-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dtype", default="float32", help="weights' dtype for the throughput runs (bfloat16, ...)"
    )
    ap.add_argument("--device", default=None, help="cpu (default), cuda, mps: where the throughput runs go")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="--model is a folder with config.json + tokenizer: build it with seeded random weights",
    )
    ap.add_argument("--child", choices=["plain", "steered", "steer_memory"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.new_tokens = args.new_tokens or (16 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        result = child_steer_memory() if args.child == "steer_memory" else child_decode_rss(args)
        print(json.dumps(result))
        return
    start = time.perf_counter()
    peft_model, tok = build_peft_model(args.model, args.seed, args.dtype, args.device, args.random_weights)
    base = peft_model.get_base_model()
    n_params = sum(p.numel() for p in base.parameters()) / 1e6
    vocab = base.get_output_embeddings().weight.shape[0]
    weights = "random weights, " if args.random_weights else ""
    model = f"{args.model} ({n_params:.0f}M params, vocab {vocab}), {weights}{args.dtype} weights on {base.device}"
    res: dict[str, Any] = {"env": environment(), "model": model}
    res["throughput"] = bench_throughput(peft_model, tok, args.batches, args.new_tokens, args.repeats)
    if base.device.type != "cpu":  # the rest measures this CPU
        res["steer_math"] = bench_steer_time(args.steer_calls, base.device)
        res["seconds"] = time.perf_counter() - start
        report_throughput(res)
        st = res["steer_math"]
        print(f"\nsteering math on {st['device']}: steer_logits on {st['shape']} fp32: {st['median_ms']:.3f} ms/call")
        finish(res, args)
        return
    with torch.inference_mode():
        res["matmul"] = bench_matmul(base)
    del peft_model
    res["steer_math"] = bench_steer_time(args.steer_calls) | run_child(args, "steer_memory", STEER_MEMORY_ENV)
    res["rss"] = bench_rss(args)
    res["rss_bf16"] = bench_rss(args, "bfloat16")
    res["seconds"] = time.perf_counter() - start
    report(res)
    finish(res, args)


def finish(res: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
