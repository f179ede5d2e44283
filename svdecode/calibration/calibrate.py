"""Calibrating the steering strength on labelled data: one pass over the calibration set collects
the per-token sufficient statistics (:mod:`svdecode.calibration.strength`), then :mod:`svdecode.calibration.objectives`
fits every objective, cross-validates them and decides what to apply.

Only answer tokens count (never prompt tokens). With ``choices`` (multiple-choice items, e.g. the
calibration questions' TruthfulQA true/false answers, or a commonsense example's label options)
the statistics of every option are collected too: the ``task`` objective and the guard then judge
on the task's own metric.

The probability-space ablation (``method="prob_space"``) is not linear in its strength: it keeps the
paper's estimators only (eqs. 41-46 with the probability direction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from svdecode.calibration.config import DEFAULT_ALPHA, CalibrationConfig, data_hash
from svdecode.calibration.objectives import (
    OBJECTIVES,
    ChoiceItem,
    ChoiceStats,
    ItemMetric,
    StrengthChoice,
    choice_accuracy,
    choose_strength,
)
from svdecode.calibration.strength import DEFAULT_CAP, DIRECTION_OF, STATS_COLUMNS, TokenStats, token_stats
from svdecode.fileio import short_hash
from svdecode.model.scoring import batches, encode_pairs
from svdecode.runs import distributed
from svdecode.steering import ESTIMATORS, aggregate_mu, token_mu

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Which direction a method's strength multiplies, so every method is calibrated the same way.
METHOD_DIRECTION = {
    "svdecode": "kl_gradient",
    "logit_arithmetic": "logit_difference",
    "prob_space": "probability",
}


@dataclass
class CalibrationResult:
    mu: float
    objective: str
    stats: dict[str, Any]
    token_mu: torch.Tensor = field(repr=False)  # mu*_t of every answer token, for histograms
    token_stats: TokenStats | None = field(default=None, repr=False)  # answer tokens, one group per pair
    choice_stats: ChoiceStats | None = field(default=None, repr=False)
    decision: StrengthChoice | None = field(default=None, repr=False)
    # what was calibrated: settings, method, alpha and data (:func:`result_key`), so a second
    # request for the same calibration can reuse this one
    key: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def estimator(self) -> str:  # the name before objectives existed
        return self.objective

    @property
    def mu_bins(self) -> dict[str, Any] | None:
        return self.decision.mu_bins if self.decision is not None else None


def collect_stats(
    streams,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    alpha: float = 0.1,
    method: str = "svdecode",
    batch_size: int = 8,
    max_length: int | None = None,
    cap: int = DEFAULT_CAP,
    progress: bool = True,
    desc: str = "calibrating mu",
) -> tuple[TokenStats, torch.Tensor]:
    """One pass over the pairs: the answer tokens' :class:`TokenStats` (group = pair index) and
    their KL(p_phi || p_theta). Under a launcher each process scores every world_size-th batch and
    the statistics are put together in order: the same batches, so the same numbers."""
    if len(prompts) == 0:
        raise ValueError("the calibration set is empty: give at least one (prompt, answer) pair")
    parts, kls = [], []
    all_batches = list(batches(len(prompts), batch_size))
    mine = [all_batches[i] for i in distributed.shard(len(all_batches))]
    bar = tqdm(  # under a launcher: the main process's share
        total=sum(sl.stop - sl.start for sl in mine),
        desc=desc,
        unit="ex",
        disable=not progress or not distributed.is_main(),
    )
    for sl in mine:
        batch = encode_pairs(tokenizer, prompts[sl], answers[sl], max_length=max_length)
        z_phi, z_theta = streams(batch.input_ids, batch.attention_mask, logits_to_keep=batch.keep)
        sel = batch.answer_mask
        za, zb = z_phi[:, :-1][sel], z_theta[:, :-1][sel]
        rows = torch.arange(sl.start, sl.stop).unsqueeze(1).expand_as(sel)[sel] - sl.start
        part = token_stats(za, zb, batch.targets[sel], alpha=alpha, method=method, cap=cap, group=rows)
        part.n_groups = sl.stop - sl.start
        parts.append(part)
        logp, logq = torch.log_softmax(za.float(), -1), torch.log_softmax(zb.float(), -1)
        kls.append((logp.exp() * (logp - logq)).sum(-1))
        bar.update(sl.stop - sl.start)
    bar.close()
    if distributed.active():
        parts, kls = _gathered(parts, kls, len(all_batches))
    return TokenStats.concat(parts), torch.cat(kls)


def _gathered(
    parts: list[TokenStats], kls: list[torch.Tensor], n_batches: int
) -> tuple[list[TokenStats], list[torch.Tensor]]:
    """Every process's batches, in batch order (moved through the CPU, back onto this device)."""
    device = kls[0].device if kls else torch.device("cpu")
    cpu = [
        (replace(p, **{k: getattr(p, k).cpu() for k in STATS_COLUMNS}), k.cpu())
        for p, k in zip(parts, kls, strict=True)
    ]
    joined = distributed.gather_sharded(cpu, n_batches)
    return (
        [replace(p, **{k: getattr(p, k).to(device) for k in STATS_COLUMNS}) for p, _ in joined],
        [k.to(device) for _, k in joined],
    )


def collect_choice_stats(
    streams,
    tokenizer,
    items: Sequence[ChoiceItem],
    metric: ItemMetric = choice_accuracy,
    **kw: Any,
) -> ChoiceStats:
    """Statistics of every option of every item (option j of item i is one scored sequence)."""
    prompts, answers, offsets = [], [], []
    for it in items:
        if len(it.options) != len(it.labels) or not it.options:
            raise ValueError(f"choice item {it.id}: {len(it.options)} options but {len(it.labels)} labels")
        offsets.append(len(prompts))
        prompts += [it.prompt] * len(it.options)
        answers += list(it.options)
    kw.setdefault("desc", "scoring choices")
    stats, _ = collect_stats(streams, tokenizer, prompts, answers, **kw)
    return ChoiceStats(list(items), stats, offsets, metric)


def calibrate_streams(
    streams,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    config: CalibrationConfig | None = None,
    *,
    method: str = "svdecode",
    ids: Sequence[str] | None = None,
    choices: Sequence[ChoiceItem] | None = None,
    choice_metric: ItemMetric = choice_accuracy,
    **overrides: Any,
) -> CalibrationResult:
    """Collect the statistics of every answer token (and of every choice option) and decide the
    strength (:func:`svdecode.calibration.objectives.choose_strength`) as ``config`` says (keyword
    ``overrides`` replace its fields; ``alpha`` None: the default mask 0.1). ``ids`` name each
    pair's item (folds keep an item's pair and its choices together; default: the pair's position)."""
    cfg = CalibrationConfig.resolve(config, overrides)
    alpha = DEFAULT_ALPHA if cfg.alpha is None else cfg.alpha
    if method not in METHOD_DIRECTION:
        raise ValueError(
            f"method {method!r} has no strength to calibrate; calibratable: {sorted(METHOD_DIRECTION)}"
        )
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r} (estimator); choose one of {OBJECTIVES}")
    group_ids = list(ids) if ids is not None else [str(i) for i in range(len(prompts))]
    key = result_key(cfg, method, alpha, prompts, answers, group_ids, choices, choice_metric)
    if method not in DIRECTION_OF:
        result = _calibrate_paper_only(streams, tokenizer, prompts, answers, cfg, alpha, method)
        result.key = key
        return result
    common = dict(
        alpha=alpha, method=method, batch_size=cfg.batch_size, max_length=cfg.max_length, cap=cfg.cap
    )
    stats, kl = collect_stats(streams, tokenizer, prompts, answers, progress=cfg.progress, **common)
    cstats = (
        collect_choice_stats(streams, tokenizer, choices, choice_metric, progress=cfg.progress, **common)
        if choices
        else None
    )
    if len(group_ids) != len(prompts):
        raise ValueError(f"{len(group_ids)} ids for {len(prompts)} calibration pairs")
    decision = distributed.on_main(  # decided once (on the main process) and handed to the others
        lambda: choose_strength(
            stats, group_ids, cstats, cfg.objective, cfg.guard, cfg.folds, cfg.bins, cfg.seed, cfg.trim
        )
    )
    mu_t = stats.num / (stats.den + 1e-12)
    summary = _summary(mu_t, stats.gold_kept, kl, len(prompts), method, alpha, cfg.trim)
    summary.update(
        stats_bytes_per_token=stats.nbytes / max(len(stats), 1),
        stats_kept_width=int(stats.kept_width),
        stats_capped_tokens=stats.n_capped,
        objective=cfg.objective,
        mu=decision.mu,
        estimates=decision.estimates,
        cv=decision.cv,
        guard=decision.guard,
        bins=decision.bins,
        n_choice_items=len(choices or ()),
    )
    return CalibrationResult(decision.mu, cfg.objective, summary, mu_t, stats, cstats, decision, key)


def result_key(
    config: CalibrationConfig,
    method: str,
    alpha: float,
    prompts: Sequence[str],
    answers: Sequence[str],
    group_ids: Sequence[str],
    choices: Sequence[ChoiceItem] | None,
    choice_metric: ItemMetric,
) -> dict[str, Any]:
    """Everything that decides a calibration's outcome on a given model: two calibrations with
    equal keys are the same calibration."""
    return {
        "settings": config.cache_key(),
        "cap": config.cap,
        "method": method,
        "alpha": float(alpha),
        "data": data_hash(prompts, answers, choices),
        "ids_sha256": short_hash(list(group_ids)),
        "choice_metric": getattr(choice_metric, "__name__", None) if choices else None,
    }


def _summary(
    mu_t: torch.Tensor,
    gold_kept: torch.Tensor,
    kl: torch.Tensor,
    n: int,
    method: str,
    alpha: float,
    trim: float,
) -> dict[str, Any]:
    """What every calibration reports: counts, the mu*_t distribution, mask and KL facts."""
    q = torch.quantile(mu_t.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {
        "n_examples": n,
        "n_tokens": int(mu_t.numel()),
        "method": method,
        "alpha": alpha,
        "trim": trim,
        "quantiles": {f"q{int(round(p * 100)):02d}": float(v) for p, v in zip(QUANTILES, q, strict=True)},
        "frac_negative": float((mu_t < 0).double().mean()),
        "frac_gold_outside_mask": float((~gold_kept).double().mean()),
        "mean_kl_adapted_base": float(kl.double().mean()),
    }


def _calibrate_paper_only(
    streams, tokenizer, prompts, answers, cfg: CalibrationConfig, alpha: float, method: str
) -> CalibrationResult:
    """The paper's per-token estimators only, for a direction the steered logits are not linear in."""
    objective, trim, batch_size, max_length = cfg.objective, cfg.trim, cfg.batch_size, cfg.max_length
    if objective not in ESTIMATORS:
        raise ValueError(
            f"method {method!r} is not linear in its strength: objective must be one of {ESTIMATORS}"
        )
    if len(prompts) == 0:
        raise ValueError("the calibration set is empty: give at least one (prompt, answer) pair")
    nums, dens, kept, kls = [], [], [], []
    bar = tqdm(total=len(prompts), desc="calibrating mu", unit="ex", disable=not cfg.progress)
    for sl in batches(len(prompts), batch_size):
        batch = encode_pairs(tokenizer, prompts[sl], answers[sl], max_length=max_length)
        z_phi, z_theta = streams(batch.input_ids, batch.attention_mask, logits_to_keep=batch.keep)
        sel = batch.answer_mask
        za, zb = z_phi[:, :-1][sel], z_theta[:, :-1][sel]
        tm = token_mu(za, zb, batch.targets[sel], alpha=alpha, direction=METHOD_DIRECTION[method])
        nums.append(tm.num)
        dens.append(tm.den)
        kept.append(tm.gold_kept)
        logp, logq = torch.log_softmax(za.float(), -1), torch.log_softmax(zb.float(), -1)
        kls.append((logp.exp() * (logp - logq)).sum(-1))
        bar.update(sl.stop - sl.start)
    bar.close()
    num, den, gold_kept = torch.cat(nums), torch.cat(dens), torch.cat(kept)
    mu_t = num / (den + 1e-12)
    estimates = {name: aggregate_mu(num, den, name, trim=trim) for name in ESTIMATORS}
    stats = _summary(mu_t, gold_kept, torch.cat(kls), len(prompts), method, alpha, trim)
    stats.update(
        objective=objective,
        mu=estimates[objective],
        estimates=estimates,
        guard={"enabled": False, "passed": None, "reason": f"{method} keeps the paper's estimators only"},
    )
    return CalibrationResult(estimates[objective], objective, stats, mu_t)
