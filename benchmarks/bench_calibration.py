"""Time of calibration after the model pass: fitting every objective, the 5-fold guard and the
confidence bins from the sufficient statistics of N answer tokens (target: < 1 s for 10k tokens).

The statistics come from synthetic logits with the default model's vocabulary size (49152) and a
realistic spread of confidence, or (``--source model``) from the default model with a random
LoRA adapter on commonsense training pairs. The model pass is not timed: it is the same pass the
paper's estimators need. Also prints bytes per token and how often the kept-set cap bites.

Usage: python benchmarks/bench_calibration.py [--tokens 10000] [--choices 100] [--source model]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from svdecode.calibration.objectives import ChoiceItem, ChoiceStats, choice_accuracy, choose_strength
from svdecode.calibration.strength import TokenStats, minimise_nll, token_stats

VOCAB = 49152


def synthetic(n_tokens: int, seed: int, groups_of: int = 10) -> TokenStats:
    """Peaked adapted logits (confidence varies by row), a base model a little off, random golds."""
    gen = torch.Generator().manual_seed(seed)
    parts, done = [], 0
    while done < n_tokens:
        n = min(1000, n_tokens - done)
        temp = (
            torch.rand(n, 1, generator=gen) * 4 + 2.0
        )  # some rows confident, some flatter (kept sets ~1-40)
        za = torch.randn(n, VOCAB, generator=gen) * temp
        zb = za + 0.7 * torch.randn(n, VOCAB, generator=gen)
        top = za.topk(5, dim=-1).indices
        y = top.gather(-1, torch.randint(0, 5, (n, 1), generator=gen)).squeeze(-1)  # gold among the top 5
        group = torch.arange(n) // groups_of
        part = token_stats(za, zb, y, alpha=0.1, group=group)
        part.n_groups = int(group.max()) + 1
        parts.append(part)
        done += n
    return TokenStats.concat(parts)


def from_model(n_tokens: int, seed: int) -> TokenStats:
    from peft import LoraConfig, get_peft_model

    from svdecode.calibration.calibrate import collect_stats
    from svdecode.data import load_commonsense, sample
    from svdecode.model.loading import load_base
    from svdecode.model.streams import make_streams

    base, tok = load_base("default")
    torch.manual_seed(seed)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    pairs = sample(load_commonsense("all", "train"), max(1, n_tokens // 6), seed)
    stats, _ = collect_stats(
        make_streams(peft_model.eval()), tok, [e.prompt for e in pairs], [e.answer for e in pairs]
    )
    return stats.take(torch.arange(len(stats)) < n_tokens)


def choices_on(stats: TokenStats, n_items: int, options: int = 4) -> ChoiceStats:
    """Items of ``options`` consecutive groups each (the first one correct), over the given stats."""
    n_items = min(n_items, stats.n_groups // options)
    items = [
        ChoiceItem(f"c{i}", "", tuple(str(j) for j in range(options)), (1,) + (0,) * (options - 1))
        for i in range(n_items)
    ]
    keep = stats.group < n_items * options
    return ChoiceStats(items, stats.take(keep), [i * options for i in range(n_items)], choice_accuracy)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=10000)
    ap.add_argument("--choices", type=int, default=100, help="choice items for the task objective (0: none)")
    ap.add_argument("--source", choices=("synthetic", "model"), default="synthetic")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = (
        synthetic(args.tokens, args.seed)
        if args.source == "synthetic"
        else from_model(args.tokens, args.seed)
    )
    ids = [f"q{g}" for g in range(stats.n_groups)]
    print(f"statistics: {len(stats)} tokens from {args.source}, {stats.n_groups} pairs, kept width {stats.kept_width}, "
          f"{stats.nbytes / len(stats):.0f} bytes/token, cap bites on {stats.n_capped} tokens")  # fmt: skip
    print(f"torch threads: {torch.get_num_threads()}")
    t, m = timed(lambda: minimise_nll(stats), args.repeats)
    print(
        f"exact NLL minimiser:                      {t * 1e3:8.1f} ms  (mu = {m.mu:.5g}, {m.iterations} evaluations)"
    )
    t, out = timed(lambda: choose_strength(stats, ids, None, "nll", True, 5, 3, args.seed), args.repeats)
    print(
        f"all objectives + 5-fold guard + 3 bins:   {t * 1e3:8.1f} ms  (guard passed: {out.guard['passed']})"
    )
    if args.choices:
        cs = choices_on(synthetic(args.choices * 4 * 8, args.seed + 1, groups_of=8), args.choices)
        cids = [c.id for c in cs.items]
        t, out = timed(
            lambda: choose_strength(stats, ids + cids, cs, "task", True, 5, 3, args.seed), args.repeats
        )
        print(f"  ... with the task objective on {len(cs.items)} items ({len(cs.stats)} option tokens): "
              f"{t * 1e3:8.1f} ms")  # fmt: skip
    print("target: < 1000 ms for 10k tokens")


if __name__ == "__main__":
    main()
