"""Steered vs plain decoding throughput inside vLLM (offline ``LLM``, greedy, N requests at once).

Three engines' worth of rows, each at every ``--concurrency`` level (N distinct prompts submitted
together, ``max_num_seqs = N``, ``--max-tokens`` new tokens each, EOS ignored so every row
decodes the same number of tokens):

* ``plain``    -- stock vLLM ``LlamaForCausalLM`` on the base model folder: one decoder pass;
* ``steered``  -- svdecode's steered model (two decoder passes + ``steer_logits``), served settings;
* ``adapter``  -- the same steered engine, requests asking ``method=adapted`` (what the plain
  adapter id costs when it is served beside the steered one: still two passes).

The adapter is ``--steered DIR`` or a seeded random LoRA (r=8, q_proj/v_proj, mu=-1) written with
torch alone into a temporary folder over ``--base`` (default: the converted default model).
Run in .venv-vllm: ``.venv-vllm/bin/python benchmarks/bench_vllm.py [--concurrency 1,8,32]
[--max-tokens 32] [--dtype float32] [--json out.json]``; benchmarks/gpu_vllm.sh runs it on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from svdecode.integrations.vllm.prepare import base_folder
from svdecode.model.config import SteeringConfig

TOPICS = ["the printing press", "photosynthesis", "volcanoes", "jazz music", "the water cycle", "black holes"]


def random_lora(out: Path, base: str, seed: int = 0, rank: int = 8, mu: float = -1.0) -> Path:
    """A seeded random LoRA on q_proj/v_proj of every layer of ``base``, as a steered folder."""
    cfg = json.loads((Path(base) / "config.json").read_text())
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * (cfg.get("head_dim") or hidden // heads)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for name, out_dim in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen) / hidden**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=gen) * 0.05
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    adapter_cfg = {
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": str(base), "fan_in_fan_out": False, "use_dora": False, "use_rslora": False,
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(adapter_cfg))
    SteeringConfig(mu=mu, base_model=str(base), adapter_type="LORA").save(out)
    return out


def run_level(llm, n: int, max_tokens: int, make_params) -> dict:
    from vllm.inputs import TokensPrompt

    tok = llm.get_tokenizer()
    prompts = [
        TokensPrompt(prompt_token_ids=tok(f"Request {i}. Write about {TOPICS[i % len(TOPICS)]}.")["input_ids"])
        for i in range(n)
    ]
    params = make_params(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"concurrency": n, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steered", type=Path, default=None)
    p.add_argument("--base", default=None, help="base model folder (default: the adapter's / the default model)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--kv-cache-mib", type=int, default=1024)
    p.add_argument(
        "--load-format", default="auto", help="vLLM's; 'dummy' = random weights (a config + tokenizer folder will do)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    from vllm import LLM, SamplingParams

    from svdecode.integrations.vllm.offline import sampling, steered_llm

    levels = [int(x) for x in args.concurrency.split(",")]
    common = {
        "dtype": args.dtype,
        "max_model_len": 512,
        "max_num_seqs": max(levels),
        "kv_cache_memory_bytes": args.kv_cache_mib << 20,
        "enforce_eager": True,
        "load_format": args.load_format,
    }
    if torch.cuda.is_available():  # GPU: CUDA graphs and vLLM's own memory sizing
        common.pop("kv_cache_memory_bytes")
        common["enforce_eager"] = False
    res: dict = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        base = str(base_folder(args.steered, args.base)) if args.steered else str(base_folder_default(args.base))
        steered = args.steered or random_lora(Path(tmp) / "steered", base)
        plain = LLM(model=base, **common)
        for n in levels:
            res["rows"].append({"engine": "plain", **run_level(plain, n, args.max_tokens, SamplingParams)})
        del plain  # its engine process ends with it
        gc.collect()
        llm = steered_llm(steered, base=base, **common)
        for n in levels:
            res["rows"].append({"engine": "steered", **run_level(llm, n, args.max_tokens, sampling)})
            adapted = lambda **kw: sampling(method="adapted", **kw)  # noqa: E731
            res["rows"].append({"engine": "adapter", **run_level(llm, n, args.max_tokens, adapted)})
    res["command"] = shlex.join(["python", *sys.argv])
    res["setup"] = f"dtype {args.dtype}, max_tokens {args.max_tokens}, greedy, {os.cpu_count()} CPUs, cuda={torch.cuda.is_available()}"
    plain_tps = {r["concurrency"]: r["tokens_per_s"] for r in res["rows"] if r["engine"] == "plain"}
    print(f"command: {res['command']}\nsetup  : {res['setup']}\n")
    print(f"{'engine':<8} {'concurrent':>10} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'vs plain':>8}")
    for r in sorted(res["rows"], key=lambda r: (r["concurrency"], r["engine"])):
        rel = r["tokens_per_s"] / plain_tps[r["concurrency"]]
        print(f"{r['engine']:<8} {r['concurrency']:>10} {r['tokens']:>7} {r['wall_s']:>8.2f} {r['tokens_per_s']:>8.1f} {rel:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def base_folder_default(base: str | None) -> Path:
    from svdecode.model.loading import resolve_model_path

    return Path(resolve_model_path(base or "default"))


if __name__ == "__main__":  # vLLM spawns workers
    main()
