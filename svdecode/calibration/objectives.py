"""Choosing the steering strength from calibration statistics: the objectives, cross-validation and
the guard that turns steering off when it does not pay.

Objectives (all computed every time from the same :class:`~svdecode.calibration.strength.TokenStats`; one
is applied):

* ``nll``     -- the exact minimiser of the calibration loss L(mu) (:func:`strength.minimise_nll`);
* ``task``    -- the mu that maximises the task's own metric on the calibration choices (e.g.
  TruthfulQA MC average, or choice accuracy), by 1-D search; needs :class:`ChoiceItem` s;
* ``mean``, ``median``, ``trimmed``, ``pooled`` -- the paper's estimators (eqs. 44-46).

The guard (on by default): k-fold cross-validation inside the calibration set, folds by item id.
Each fold's strength is fitted on the other folds and judged on the held-out one, against mu = 0,
on the task metric when there are choices (a sum-level objective and per-token estimators can
disagree in sign, and which is right changes from model to model), else on the per-token NLL.
Steering stays on only if the mean held-out gain exceeds its standard error across folds.

Strength that follows confidence: one exact-NLL strength per bin of the adapted model's
log max-probability (bin edges at calibration quantiles). Kept only if cross-validation says it
beats the applied scalar strength.

Pure tensors and numbers, no model code.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from svdecode.calibration.strength import (
    MU_LIMIT,
    TokenStats,
    binned_mu,
    fit_binned,
    group_scores,
    maximise,
    minimise_nll,
    paper_estimate,
    search_grid,
    token_logprob,
)
from svdecode.steering import ESTIMATORS

OBJECTIVES = ("nll", "task", *ESTIMATORS)
DEFAULT_OBJECTIVE = "nll"
# The calibration defaults (:class:`svdecode.calibration.config.CalibrationConfig` carries them).
DEFAULT_FOLDS = 5  # the guard's cross-validation folds
DEFAULT_BINS = 3  # confidence bins of the binned strength (0 or 1: off)
DEFAULT_TRIM = 0.1  # the trimmed mean's trimmed fraction
# Confidence bins: at most MAX_BINS (more is a typo, and each bin costs a fit per CV fold), and
# each needs MIN_TOKENS_PER_BIN answer tokens on average, else fewer bins are fitted (a bin of a
# handful of tokens is fitted to noise, often at the search bound).
MAX_BINS = 64
MIN_TOKENS_PER_BIN = 16

log = logging.getLogger("svdecode")


def at_bound(mu: float) -> bool:
    """A strength at the search bound |mu| = MU_LIMIT: the loss still fell there, the fit is
    unbounded (the data cannot pin a strength down), so it is never applied."""
    return abs(mu) >= MU_LIMIT


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item scored by the steered log-likelihood of each option after ``prompt``.

    ``labels[i]`` is 1 for a correct option; ``meta`` carries what a task metric needs beyond
    that (e.g. TruthfulQA's MC1 target set).
    """

    id: str
    prompt: str
    options: tuple[str, ...]
    labels: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


ItemMetric = Callable[[ChoiceItem, Sequence[float]], float]


def choice_accuracy(item: ChoiceItem, scores: Sequence[float]) -> float:
    """1 when the best-scored option is a correct one (a tie with a wrong option is not a win)."""
    best = max(scores)
    winners = [i for i, s in enumerate(scores) if s == best]
    return float(len(winners) == 1 and item.labels[winners[0]] == 1)


@dataclass
class ChoiceStats:
    """Statistics of every option of every item: option j of item i is group ``offsets[i] + j``."""

    items: list[ChoiceItem]
    stats: TokenStats
    offsets: list[int]
    metric: ItemMetric = choice_accuracy
    # option scores by scalar strength: the folds' searches revisit the same grid
    _scores: dict[float, list[float]] = field(default_factory=dict, repr=False)

    def scores(self, mu: float | torch.Tensor) -> list[float]:
        """Every option's summed steered log-probability at ``mu``."""
        if isinstance(mu, torch.Tensor):
            return group_scores(self.stats, mu).tolist()
        key = float(mu)
        if key not in self._scores:
            self._scores[key] = group_scores(self.stats, key).tolist()
        return self._scores[key]

    def item_values(self, mu: float | torch.Tensor, which: Sequence[int] | None = None) -> list[float]:
        """The task metric of each item (or of the items ``which``) at strength ``mu``."""
        scores = self.scores(mu)
        rows = range(len(self.items)) if which is None else which
        return [
            self.metric(self.items[i], scores[self.offsets[i] : self.offsets[i] + len(self.items[i].options)])
            for i in rows
        ]

    def value(self, mu: float | torch.Tensor, which: Sequence[int] | None = None) -> float:
        vals = self.item_values(mu, which)
        return sum(vals) / len(vals) if vals else math.nan


# -- fitting ------------------------------------------------------------------------------------


def fit_all(
    stats: TokenStats,
    choices: ChoiceStats | None,
    which: Sequence[int] | None = None,
    trim: float = DEFAULT_TRIM,
) -> dict[str, float]:
    """The strength every objective picks from ``stats`` (and the choice items ``which``); the task
    search is anchored at the others' strengths, so it always considers them."""
    out = {"nll": minimise_nll(stats).mu, **{e: paper_estimate(stats, e, trim) for e in ESTIMATORS}}
    if choices is not None:
        grid = search_grid(list(out.values()))
        out["task"] = maximise(lambda m: choices.value(m, which), grid)[0]
    return {o: out[o] for o in OBJECTIVES if o in out}


def confidence_edges(stats: TokenStats, bins: int) -> list[float]:
    """Bin edges of the confidence observable at its calibration quantiles."""
    qs = [k / bins for k in range(1, bins)]
    return [float(stats.observable.double().quantile(q)) for q in qs]


# -- cross-validation ---------------------------------------------------------------------------


def fold_of(ids: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """A seeded assignment of item ids to k folds of (nearly) equal size."""
    uniq = sorted(set(ids))
    random.Random(seed).shuffle(uniq)
    return {i: n % k for n, i in enumerate(uniq)}


@dataclass
class Split:
    """The calibration data of one fold: training and held-out token statistics and choice rows."""

    train: TokenStats
    held: TokenStats
    train_items: list[int]
    held_items: list[int]


def make_splits(
    stats: TokenStats, group_ids: Sequence[str], choices: ChoiceStats | None, k: int, seed: int
) -> list[Split]:
    """k folds by item id over the pairs (``group_ids[g]`` is pair g's id) and the choice items."""
    all_ids = list(group_ids) + ([c.id for c in choices.items] if choices else [])
    folds = fold_of(all_ids, k, seed)
    pair_fold = torch.tensor([folds[i] for i in group_ids])[stats.group]
    out = []
    for f in range(k):
        rows = list(range(len(choices.items))) if choices else []
        held = [j for j in rows if folds[choices.items[j].id] == f]
        train = [j for j in rows if folds[choices.items[j].id] != f]
        out.append(Split(stats.take(pair_fold != f), stats.take(pair_fold == f), train, held))
    return out


def _held_gain(split: Split, choices: ChoiceStats | None, mu: float | Callable[[TokenStats], Any]) -> float:
    """Held-out improvement over mu = 0: task metric points if there are choices, else mean NLL
    per token. ``mu`` may be a function of the statistics (per-token strengths)."""
    strength = mu if not callable(mu) else None
    if choices is not None and split.held_items:
        m = strength if strength is not None else mu(choices.stats)
        return choices.value(m, split.held_items) - choices.value(0.0, split.held_items)
    if len(split.held) == 0:
        return math.nan
    m = strength if strength is not None else mu(split.held)
    return float((token_logprob(split.held, m) - token_logprob(split.held, 0.0)).mean())


@dataclass
class CrossValidation:
    """Per-fold fitted strengths and held-out gains of one objective."""

    mus: list[float]
    gains: list[float]
    judge: str

    @property
    def mean_gain(self) -> float:
        vals = [g for g in self.gains if not math.isnan(g)]
        return statistics.fmean(vals) if vals else math.nan

    @property
    def se(self) -> float:
        vals = [g for g in self.gains if not math.isnan(g)]
        return statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else math.inf

    @property
    def passes(self) -> bool:
        """The guard's rule: a positive mean held-out gain larger than its standard error."""
        return self.mean_gain > 0 and self.mean_gain > self.se

    def to_json(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "fold_mu": self.mus,
            "fold_gain": self.gains,
            "mean_gain": self.mean_gain,
            "se": self.se,
            "passes": self.passes,
        }


def cross_validate(
    splits: Sequence[Split], choices: ChoiceStats | None, trim: float = DEFAULT_TRIM
) -> dict[str, CrossValidation]:
    """Every objective's per-fold strengths (fitted on the other folds) and held-out gains."""
    judge = "task" if choices is not None else "nll"
    per: dict[str, CrossValidation] = {}
    for sp in splits:
        if len(sp.train) == 0:
            continue
        for objective, mu in fit_all(sp.train, choices, sp.train_items, trim).items():
            cv = per.setdefault(objective, CrossValidation([], [], judge))
            cv.mus.append(mu)
            cv.gains.append(_held_gain(sp, choices, mu))
    return per


def cross_validate_binned(
    splits: Sequence[Split], choices: ChoiceStats | None, edges: Sequence[float]
) -> CrossValidation:
    mus, gains = [], []
    for sp in splits:
        if len(sp.train) == 0:
            continue
        fits = [m.mu for m in fit_binned(sp.train, edges)]
        mus.append(fits)
        gains.append(_held_gain(sp, choices, lambda st, fits=fits: binned_mu(st.observable, edges, fits)))
    return CrossValidation(mus, gains, "task" if choices is not None else "nll")


# -- the decision ---------------------------------------------------------------------------------


@dataclass
class StrengthChoice:
    """What calibration decided: the applied strength(s), every objective's estimate, and why."""

    mu: float  # applied scalar strength (0 when the guard turned steering off)
    objective: str
    estimates: dict[str, float]
    cv: dict[str, dict[str, Any]]
    guard: dict[str, Any]
    bins: dict[str, Any] | None  # {"observable", "edges", "mu", "cv", "applied"}

    @property
    def mu_bins(self) -> dict[str, Any] | None:
        """The binned strengths to apply, or None."""
        if not self.bins or not self.bins.get("applied"):
            return None
        return {k: self.bins[k] for k in ("observable", "edges", "mu")}


def choose_strength(
    stats: TokenStats,
    group_ids: Sequence[str],
    choices: ChoiceStats | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    guard: bool = True,
    folds: int = DEFAULT_FOLDS,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
    trim: float = DEFAULT_TRIM,
) -> StrengthChoice:
    """Fit every objective on all of the calibration data, cross-validate them, and decide.

    ``group_ids[g]`` is the item id of pair g (folds never split an item's pair and its choices).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if objective == "task" and choices is None:
        raise ValueError("objective 'task' needs multiple-choice calibration items (choices=...)")
    estimates = fit_all(stats, choices, None, trim)
    n_items = len(set(group_ids) | ({c.id for c in choices.items} if choices else set()))
    k = min(folds, n_items)
    splits = make_splits(stats, group_ids, choices, k, seed) if k >= 2 else []
    cv = cross_validate(splits, choices, trim) if splits else {}
    chosen = cv.get(objective)
    if not guard:
        decision = {
            "enabled": False,
            "passed": None,
            "reason": "guard off (--no-guard): the fit is applied as is",
        }
    elif chosen is None:
        decision = {
            "enabled": True,
            "passed": False,
            "reason": f"{n_items} item(s): too few to cross-validate",
        }
    else:
        verdict = f"held-out gain {chosen.mean_gain:+.4g} vs its standard error {chosen.se:.3g} ({len(chosen.gains)} folds, judged on {chosen.judge})"
        decision = {"enabled": True, "passed": chosen.passes, "reason": verdict}
    if decision["passed"] is not False and at_bound(estimates[objective]):
        decision = {
            "enabled": guard,
            "passed": False,
            "unbounded": True,
            "reason": f"the {objective} fit ran to the search bound (mu = {estimates[objective]:.4g}, |mu| = "
            f"{MU_LIMIT:g}): the loss still falls there, so the data do not determine a strength; not applied",
        }
        log.warning("calibration: %s", decision["reason"])
    on = decision["passed"] is not False
    bin_info = _binned(stats, choices, splits, bins, chosen) if bins > 1 and on else None
    return StrengthChoice(
        mu=estimates[objective] if on else 0.0,
        objective=objective,
        estimates=estimates,
        cv={o: c.to_json() for o, c in cv.items()},
        guard=decision,
        bins=bin_info,
    )


def _binned(
    stats: TokenStats,
    choices: ChoiceStats | None,
    splits: Sequence[Split],
    bins: int,
    scalar: CrossValidation | None,
) -> dict[str, Any] | None:
    """Binned strengths fitted on everything; applied only if their held-out gain beats the scalar
    strength's by more than its standard error (and passes the guard's own rule), and never when
    a bin's fit is unbounded. Fewer bins than asked when the tokens do not fill them (None: < 2)."""
    used = min(bins, len(stats) // MIN_TOKENS_PER_BIN)
    if used < 2:
        log.warning(
            "calibration: no confidence bins: %d answer tokens, %d per bin needed",
            len(stats),
            MIN_TOKENS_PER_BIN,
        )
        return None
    edges = confidence_edges(stats, used)
    fits = [m.mu for m in fit_binned(stats, edges)]
    out: dict[str, Any] = {"observable": "log_max_p_adapted", "edges": edges, "mu": fits, "applied": False}
    if used < bins:
        out["note"] = (
            f"{used} bins of the {bins} asked: {len(stats)} answer tokens, {MIN_TOKENS_PER_BIN} per bin"
        )
        log.warning("calibration: %s", out["note"])
    if any(at_bound(m) for m in fits):
        out["note"] = (
            f"bin strengths at the search bound |mu| = {MU_LIMIT:g} (unbounded fits: the loss of those bins' "
            "tokens still falls there, so they do not determine a strength); not applied"
        )
        log.warning("calibration: confidence-binned strengths %s: %s", fits, out["note"])
        return out
    if splits:
        cvb = cross_validate_binned(splits, choices, edges)
        out["cv"] = cvb.to_json()
        better = scalar is None or cvb.mean_gain - scalar.mean_gain > cvb.se
        out["applied"] = bool(cvb.passes and better)
    return out
