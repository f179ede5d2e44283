"""mu-curves: the calibration objective and the test metric along the steering strength, with every
objective's strength marked, from ONE scoring pass over the test set.

The test items' options are scored once into sufficient statistics (:mod:`svdecode.calibration.strength`); the
test metric at any strength is then exact without touching the model again. The test curve is the
ORACLE -- it is reported (headroom: its best point minus mu = 0; each objective's share of that)
and never used to choose anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdecode.calibration.calibrate import collect_choice_stats
from svdecode.calibration.objectives import BINNED, ChoiceItem, ChoiceStats, ItemMetric, choice_accuracy
from svdecode.calibration.strength import binned_mu, search_grid
from svdecode.catalog import COMMONSENSE, TRUTHFULQA_MC
from svdecode.eval import metrics
from svdecode.eval.choices import commonsense_choice_item, mc_choice_item, truthfulqa_mc_average
from svdecode.eval.methods import MethodSet, MethodSpec
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.truthfulqa_mc import mc_prompt
from svdecode.fileio import short_hash, write_json_atomic
from svdecode.runs import distributed

log = logging.getLogger("svdecode")

CURVE_TASKS = (TRUTHFULQA_MC, COMMONSENSE)


def test_choices(
    task: str, items: Sequence[Any], mc_prompt_style: str
) -> tuple[list[ChoiceItem], ItemMetric]:
    """The test items as choice items, with the metric the task reports."""
    if task == TRUTHFULQA_MC:
        return [
            mc_choice_item(it, mc_prompt(it.question, mc_prompt_style)) for it in items
        ], truthfulqa_mc_average
    if task == COMMONSENSE:
        return [commonsense_choice_item(ex) for ex in items], choice_accuracy
    raise ValueError(f"no mu-curve for task {task!r}; tasks with one: {CURVE_TASKS}")


def curve_specs(mset: MethodSet) -> list[MethodSpec]:
    """The calibrated SVDecode specs whose strengths the curve marks (one alpha: the main spec's)."""
    main = next((s for s in mset if s.name == "peft+svdecode"), None)
    if main is None:
        return []
    return [
        s
        for s in mset
        if s.method == "svdecode"
        and s.alpha == main.alpha
        and s.calibration.get("key") == main.calibration.get("key")
        and not s.decoding
        and s.score_lam is None
    ]


def _strength(spec: MethodSpec, cs: ChoiceStats):
    if spec.mu_bins:
        return binned_mu(cs.stats.observable, spec.mu_bins["edges"], spec.mu_bins["mu"])
    return float(spec.mu)


def mu_curve(
    model,
    task: str,
    items: Sequence[Any],
    mset: MethodSet,
    *,
    mc_prompt_style: str = "qa_primer",
    batch_size: int = 8,
    max_length: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The test metric (ORACLE) on the strength grid and at every marked spec's strength, the
    calibration curve, headroom and the share of it each objective captures; None without a
    calibrated SVDecode spec."""
    specs = curve_specs(mset)
    if not specs:
        return None
    main = (
        specs[0] if specs[0].name == "peft+svdecode" else next(s for s in specs if s.name == "peft+svdecode")
    )
    choices, metric = test_choices(task, items, mc_prompt_style)
    estimates = list((main.calibration.get("estimates") or {}).values())
    grid = search_grid([s.mu for s in specs] + estimates, limit=1e3, per_decade=6)
    binned = _binned_candidate(main)
    key = short_hash(
        {
            "task": task,
            "items": [(c.id, c.prompt, c.options) for c in choices],
            "alpha": main.alpha,
            "grid": grid,
            "marks": [(s.name, s.mu, s.mu_bins) for s in specs + ([binned] if binned else [])],
            "model": model_fingerprint(model),
        }
    )
    path = Path(cache_dir) / task / f"mu_curve-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        import json

        log.info("mu-curve %s: reused %s", task, path)
        return json.loads(path.read_text())
    cs = collect_choice_stats(
        model.streams, model.tokenizer, choices, metric, alpha=main.alpha, method="svdecode",
        batch_size=batch_size, max_length=max_length, progress=progress, desc=f"mu-curve [{task}]",
    )  # fmt: skip
    zero = cs.item_values(0.0)
    test = [sum(v) / len(v) for v in (cs.item_values(m) for m in grid)]
    best = max(range(len(grid)), key=lambda i: (test[i], -abs(grid[i])))
    headroom = test[best] - sum(zero) / len(zero)
    marks = {s.name: _mark(s, cs, zero, headroom, n_boot, seed) for s in specs}
    # every objective's own (unguarded) strength from the main calibration, unless a spec has it
    shown = {(m["objective"], m["mu"]) for m in marks.values()}
    for objective, mu in (main.calibration.get("estimates") or {}).items():
        if (objective, mu) not in shown and f"objective={objective}" not in marks:
            raw = MethodSpec(
                f"objective={objective}", "svdecode", mu=mu, alpha=main.alpha, estimator=objective
            )
            marks[raw.name] = _mark(raw, cs, zero, headroom, n_boot, seed)
    if binned is not None:
        marks[binned.name] = _mark(binned, cs, zero, headroom, n_boot, seed)
    out = {
        "oracle": "the test curve is the ORACLE: reported, never used to choose a strength",
        "metric": "MC average (MC1+MC2+MC3)/3"
        if task == TRUTHFULQA_MC
        else "likelihood-scored choice accuracy",
        "n_items": len(choices),
        "alpha": main.alpha,
        "grid": grid,
        "test": test,
        "at_zero": sum(zero) / len(zero),
        "best_mu": grid[best],
        "best": test[best],
        "headroom": headroom,
        "marks": marks,
        "calibration": main.calibration.get("curve"),
        "stats_bytes_per_token": cs.stats.nbytes / max(len(cs.stats), 1),
        "stats_capped_tokens": cs.stats.n_capped,
    }
    if path is not None and distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, out)
    return out


def _binned_candidate(main: MethodSpec) -> MethodSpec | None:
    """The calibration's confidence-binned candidate as a spec to mark, unless it is what the main
    spec applies (then the main mark is it) or it was no candidate (bins at the search bound)."""
    cal = main.calibration
    if main.mu_bins or BINNED not in ((cal.get("selection") or {}).get("candidates") or {}):
        return None
    bins = {k: cal["bins"][k] for k in ("observable", "edges", "mu")}
    mu = float((cal.get("estimates") or {}).get("nll", 0.0))  # the bins' single-bin form
    return MethodSpec(
        f"objective={BINNED}", "svdecode", mu=mu, alpha=main.alpha, estimator=BINNED, mu_bins=bins
    )


def _mark(
    spec: MethodSpec, cs: ChoiceStats, zero: list[float], headroom: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """One spec's strength on the curve: test metric, paired difference vs mu = 0, headroom share."""
    vals = cs.item_values(_strength(spec, cs))
    diff = metrics.paired_bootstrap(zero, vals, n_boot=n_boot, seed=seed)
    gain = diff["diff"]
    return {
        "mu": spec.mu,
        "binned": bool(spec.mu_bins),
        "mu_bins": list(spec.mu_bins["mu"]) if spec.mu_bins else None,  # the strengths applied per bin
        "objective": spec.estimator,
        "test": sum(vals) / len(vals),
        "diff": diff,
        "share_of_headroom": gain / headroom if headroom > 0 else None,
    }
