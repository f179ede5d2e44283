"""How the selection criterion behaves when one candidate is noisy: simulated per-item held-out gains.

Each run draws 100 items' paired held-out gains for every candidate -- the statistics
:func:`svdecode.calibration.selection.pick` sees -- and picks one by ``mean - k * se`` (k = 0 is the plain
arg-max of the mean gain) or by the one-standard-error rule (the least noisy candidate whose mean
is within one standard error of the best). The value of a pick is the candidate's *true* mean gain
(what it is worth on new items); "off" is worth 0. The candidates mimic docs/results.md §2 and
issue 18: a steady candidate (true gain ``--steady`` points, per-item s.d. 3, like `nll`),
``--noisy`` noisy ones (per-item s.d. 15, like `task`, whose fold strengths jumped from -14 to
-1000, and the paper's `mean`) whose true mean is varied, and flat ones that do nothing (s.d. 1,
like `median`/`trimmed`); eight in all.

Usage: python benchmarks/sim_selection.py [--runs 4000] [--items 100] [--noisy 1] [--steady 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np

from svdecode.calibration.selection import pick, summary


def one_se_rule(gains: dict[str, np.ndarray]) -> str:
    stats = {n: summary(g, 0.0)[:2] for n, g in gains.items()}
    best = max(stats, key=lambda n: stats[n][0])
    mean, se = stats[best]
    if mean <= 0:
        return "off"
    near = [n for n, (m, s) in stats.items() if m >= mean - se and m > 0]
    return min(near, key=lambda n: stats[n][1])


def simulate(
    noisy_mean: float, steady: float, n_noisy: int, items: int, runs: int, seed: int
) -> dict[str, tuple[float, float]]:
    """Per criterion: (mean true gain of its pick, share of runs it picked a noisy candidate)."""
    rng = np.random.default_rng(seed)
    noisy_names = [f"noisy{i}" for i in range(n_noisy)]
    flat_names = [f"flat{i}" for i in range(7 - n_noisy)]
    truth = {"steady": steady, **{n: noisy_mean for n in noisy_names}, **{n: 0.0 for n in flat_names}}
    sd = {"steady": 3.0, **{n: 15.0 for n in noisy_names}, **{n: 1.0 for n in flat_names}}
    criteria = {f"k={k:g}": (lambda g, k=k: pick(g, k)) for k in (0.0, 0.5, 1.0, 1.5, 2.0)}
    criteria["1-SE rule"] = one_se_rule
    value = {c: 0.0 for c in criteria}
    noisy = {c: 0 for c in criteria}
    for _ in range(runs):
        gains = {n: rng.normal(truth[n], sd[n], items) for n in truth}
        for c, rule in criteria.items():
            chosen = rule(gains)
            value[c] += truth.get(chosen, 0.0)
            noisy[c] += chosen.startswith("noisy")
    return {c: (value[c] / runs, noisy[c] / runs) for c in criteria}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4000)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--steady", type=float, default=0.5, help="true gain of the steady candidate (points)")
    ap.add_argument("--noisy", type=int, default=1, help="how many of the 7 other candidates are noisy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    means = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0)
    rows = {m: simulate(m, args.steady, args.noisy, args.items, args.runs, args.seed) for m in means}
    criteria = list(next(iter(rows.values())))
    print(f"true gain of the pick (points; share of runs that picked a noisy candidate), {args.runs} runs "
          f"of {args.items} items; steady candidate +{args.steady}, {args.noisy} noisy")  # fmt: skip
    print("| noisy true mean | " + " | ".join(criteria) + " |")
    print("|---" * (len(criteria) + 1) + "|")
    for m, res in rows.items():
        print(f"| {m:+g} | " + " | ".join(f"{v:+.2f} ({p:.0%})" for v, p in res.values()) + " |")
    # regret: what the pick loses against the best of (steady, noisy, off) in each row
    regret = {c: [max(args.steady, m, 0.0) - rows[m][c][0] for m in means] for c in criteria}
    print("| mean regret | " + " | ".join(f"{np.mean(regret[c]):.2f}" for c in criteria) + " |")
    print("| worst regret | " + " | ".join(f"{max(regret[c]):.2f}" for c in criteria) + " |")


if __name__ == "__main__":
    main()
