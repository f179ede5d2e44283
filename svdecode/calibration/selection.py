"""What calibration applies: every candidate objective cross-validated, the best chosen by a score
that accounts for noise, and the whole select-then-apply procedure judged before it is applied.

* **Candidates**: every objective of :mod:`svdecode.calibration.objectives` that the data allows (``choice``
  and ``task`` need answer options) and the confidence-binned NLL fit (``binned``).
* **Per-item paired held-out gains**: k folds by item id; a candidate fitted without fold f is
  judged on each item of f against mu = 0 -- on the task metric when the data has choices (points
  per item), else on the answer tokens' log-likelihood (nats per token, each item's sum over its
  tokens divided by the mean item length). 100 items give 100 paired gains, not 5 fold means.
* **Selection**: the candidate with the best ``score = cv_gain - SE_PENALTY * se`` (a lower
  confidence bound), against "off" (score 0). A plain arg-max of the mean gain follows whichever
  candidate is noisiest (benchmarks/sim_selection.py measures it; docs/calibration.md).
* **The guard judges the procedure**: picking the best of eight on the same folds overstates its
  gain, so the selection is rerun inside each outer fold's complement (inner folds: the other
  folds) and the pick of each is judged on the outer fold's items -- nested cross-validation.
  The chosen strength (fitted on all the data) is applied only if that nested gain is positive and
  larger than ``GATE_SE`` of its standard errors; else steering is off. ``objective=<name>``
  forces one candidate: nothing is selected, so its plain cross-validated gain is the judge.

Pure tensors and numbers, no model code.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from svdecode.calibration.objectives import (
    BINNED,
    CHOOSABLE,
    DEFAULT_BINS,
    DEFAULT_FOLDS,
    DEFAULT_TRIM,
    MIN_TOKENS_PER_BIN,
    OBJECTIVES,
    OFF,
    SELECT,
    ChoiceStats,
    at_bound,
    confidence_edges,
    fit_all,
)
from svdecode.calibration.strength import MU_LIMIT, TokenStats, binned_mu, fit_binned, token_logprob

CANDIDATES = (*OBJECTIVES, BINNED)
# A candidate's score is its cross-validated gain minus this many standard errors, chosen from the
# simulation in benchmarks/sim_selection.py (docs/calibration.md).
SE_PENALTY = 1.0
# Steering is applied only if the nested gain exceeds this many of its standard errors (and 0):
# the guard's rule before selection existed, now on per-item paired gains.
GATE_SE = 1.0

Strength = float | list[float]  # a scalar strength, or one per confidence bin

log = logging.getLogger("svdecode")


def unbounded(mu: Strength | None) -> bool:
    """A fit at the search bound (any bin of it): the loss still fell there, so the data do not
    determine a strength, and it is never applied (nor selected)."""
    return mu is not None and any(at_bound(m) for m in (mu if isinstance(mu, list) else [mu]))


def fold_of(ids: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """A seeded assignment of item ids to k folds of (nearly) equal size."""
    uniq = sorted(set(ids))
    random.Random(seed).shuffle(uniq)
    return {i: n % k for n, i in enumerate(uniq)}


def summary(gains: Any, penalty: float = SE_PENALTY) -> tuple[float, float, float]:
    """(mean, standard error, score) of per-item paired gains (a tensor or array)."""
    g = torch.as_tensor(gains, dtype=torch.float64)
    n = len(g)
    if n == 0:
        return math.nan, math.inf, -math.inf
    mean = float(g.mean())
    se = float(g.std() / math.sqrt(n)) if n > 1 else math.inf
    return mean, se, mean - penalty * se


def pick(gains: Mapping[str, Any], penalty: float = SE_PENALTY) -> str:
    """The candidate whose per-item held-out gains have the best score, or "off" when no score
    beats 0 (the score of not steering) by more than rounding; ties go to the first."""
    best, best_score = OFF, 1e-12
    for name, g in gains.items():
        score = summary(g, penalty)[2]
        if score > best_score:
            best, best_score = name, score
    return best


class FoldFits:
    """The calibration data in k folds by item id; every candidate fitted on the data outside any
    set of folds (cached: nested cross-validation revisits them), and each fit's per-item paired
    gains over mu = 0 on every judged item."""

    def __init__(
        self,
        stats: TokenStats,
        group_ids: Sequence[str],
        choices: ChoiceStats | None,
        k: int,
        seed: int,
        edges: list[float] | None,
        trim: float,
    ) -> None:
        self.stats, self.choices, self.edges, self.trim, self.k = stats, choices, edges, trim, k
        folds = fold_of(list(group_ids) + ([c.id for c in choices.items] if choices else []), k, seed)
        self.token_fold = torch.tensor([folds[i] for i in group_ids], dtype=torch.long)[stats.group]
        if choices is not None:
            self.judge = "task"
            self.item_fold = torch.tensor([folds[c.id] for c in choices.items])
        else:
            self.judge = "nll"
            names = sorted(set(group_ids))
            index = {n: i for i, n in enumerate(names)}
            self.item_of_token = torch.tensor([index[i] for i in group_ids])[stats.group]
            self.item_fold = torch.tensor([folds[n] for n in names])
            self.scale = len(stats) / len(names)  # mean answer tokens per item
            self.lp0 = token_logprob(stats, 0.0)
        self._fits: dict[frozenset[int], dict[str, Strength]] = {}
        self._gains: dict[tuple[frozenset[int], str], torch.Tensor] = {}

    @property
    def n_items(self) -> int:
        return len(self.item_fold)

    def fits(self, excluded: frozenset[int]) -> dict[str, Strength]:
        """Every candidate's strength fitted without the folds ``excluded``."""
        if excluded not in self._fits:
            out: dict[str, Strength] = {}
            train = self.stats.take(
                ~torch.isin(self.token_fold, torch.tensor(sorted(excluded), dtype=torch.long))
            )
            if len(train):
                rows = torch.nonzero(~self._in(excluded)).flatten().tolist()
                out.update(fit_all(train, self.choices, rows if self.choices else None, self.trim))
                if self.edges is not None:
                    out[BINNED] = [m.mu for m in fit_binned(train, self.edges)]
            self._fits[excluded] = out
        return self._fits[excluded]

    def _in(self, folds: frozenset[int]) -> torch.Tensor:
        """Which judged items lie in ``folds``."""
        return torch.isin(self.item_fold, torch.tensor(sorted(folds), dtype=torch.long))

    def gains(self, excluded: frozenset[int], name: str) -> torch.Tensor:
        """Per judged item, the gain of ``name``'s fit without ``excluded`` over mu = 0."""
        key = (excluded, name)
        if key not in self._gains:
            mu = self.fits(excluded).get(name)
            if mu is None:  # no training data outside those folds: nothing to steer with
                g = torch.zeros(self.n_items, dtype=torch.float64)
            elif self.choices is not None:
                m = binned_mu(self.choices.stats.observable, self.edges, mu) if name == BINNED else mu
                g = self.choices.item_array(m) - self.choices.item_array(0.0)
            else:
                m = binned_mu(self.stats.observable, self.edges, mu) if name == BINNED else mu
                tok = token_logprob(self.stats, m) - self.lp0
                g = torch.zeros(self.n_items, dtype=torch.float64).index_add_(0, self.item_of_token, tok)
                g /= self.scale
            self._gains[key] = g
        return self._gains[key]

    def held_out(self, name: str, outer: frozenset[int] = frozenset()) -> torch.Tensor:
        """Per-item gains of ``name`` by cross-validation over the folds not in ``outer``: each item
        judged by the fit without its own fold (and without ``outer``), for the items outside
        ``outer``."""
        g = torch.zeros(self.n_items, dtype=torch.float64)
        for f in range(self.k):
            if f not in outer:
                rows = self.item_fold == f
                g[rows] = self.gains(outer | {f}, name)[rows]
        return g[~self._in(outer)]

    def select(self, names: Sequence[str], outer: frozenset[int] = frozenset()) -> str:
        """:func:`pick` on cross-validation inside the folds not in ``outer``, among the candidates
        whose fit without ``outer`` is bounded (an unbounded one would not be applied)."""
        fits = self.fits(outer)
        return pick({n: self.held_out(n, outer) for n in names if n in fits and not unbounded(fits[n])})

    def nested(self, names: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Per-item gains of the select-then-apply procedure: for each outer fold, the selection
        made without it, fitted without it, judged on its items; and each outer fold's pick."""
        g, picks = torch.zeros(self.n_items, dtype=torch.float64), []
        for o in range(self.k):
            pick = self.select(names, frozenset({o}))
            picks.append(pick)
            rows = self.item_fold == o
            if pick != OFF:
                g[rows] = self.gains(frozenset({o}), pick)[rows]
        return g, picks


@dataclass
class StrengthChoice:
    """What calibration decided: the applied strength(s), every objective's estimate, and why."""

    mu: float  # applied scalar strength (0 when steering is off)
    objective: str  # the candidate applied, or "off"
    estimates: dict[str, float]
    guard: dict[str, Any]
    bins: dict[str, Any] | None  # {"observable", "edges", "mu", "applied"}
    selection: dict[str, Any] | None  # candidates, chosen, nested gain (None: too few items)

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
    objective: str = SELECT,
    guard: bool = True,
    folds: int = DEFAULT_FOLDS,
    bins: int = DEFAULT_BINS,
    seed: int = 0,
    trim: float = DEFAULT_TRIM,
) -> StrengthChoice:
    """Fit every candidate on all of the calibration data, cross-validate them, choose (or take the
    forced ``objective``), judge the procedure, and decide (module docstring).

    ``group_ids[g]`` is the item id of pair g (folds never split an item's pair and its choices).
    """
    if objective not in CHOOSABLE:
        raise ValueError(f"unknown objective {objective!r}; choose one of {CHOOSABLE}")
    if objective in ("task", "choice") and choices is None:
        raise ValueError(f"objective {objective!r} needs multiple-choice calibration items (choices=...)")
    estimates = fit_all(stats, choices, None, trim)
    bin_info = _binned(stats, bins)
    if objective == BINNED and bin_info is None:
        raise ValueError(
            f"objective 'binned' needs at least 2 confidence bins of {MIN_TOKENS_PER_BIN} answer tokens: "
            f"bins={bins}, {len(stats)} answer tokens"
        )
    edges = bin_info["edges"] if bin_info is not None and not unbounded(bin_info["mu"]) else None
    fitted = {**estimates, BINNED: bin_info["mu"]} if bin_info is not None else estimates
    n_items = len(set(group_ids) | ({c.id for c in choices.items} if choices else set()))
    k = min(folds, n_items)
    ff = FoldFits(stats, group_ids, choices, k, seed, edges, trim) if k >= 2 else None
    if objective == BINNED and edges is None:  # forced bins fitted at the search bound: never applied
        return _decision(estimates, bin_info, None, BINNED, fitted[BINNED], guard, bin_info["note"])
    if ff is None or ff.n_items < 2:
        reason = f"{n_items} item(s): too few to cross-validate"
        forced = "nll" if objective == SELECT else objective
        return _decision(
            estimates, bin_info, None, forced if not guard else OFF, fitted[forced], guard, reason
        )
    names = [c for c in CANDIDATES if c in estimates or (c == BINNED and edges is not None)]
    table = {}
    for name in names:
        gain, se, score = summary(ff.held_out(name))
        fold_mu = [ff.fits(frozenset({f})).get(name) for f in range(k)]
        table[name] = {"mu": fitted[name], "cv_gain": gain, "se": se, "score": score, "fold_mu": fold_mu}
    if objective == SELECT:
        bounded = [n for n in names if not unbounded(table[n]["mu"])]
        chosen = ff.select(names) if guard else max(bounded, key=lambda n: table[n]["score"], default=OFF)
        nested, picks = ff.nested(names)
        what = f"nested held-out gain of the selection (outer folds picked {', '.join(picks)})"
    else:
        chosen, nested, picks = objective, ff.held_out(objective), None
        what = f"held-out gain of {objective} (forced: nothing selected)"
    gain, se, _ = summary(nested)
    selection = {
        "criterion": f"cv_gain - {SE_PENALTY:g} se; applied if nested_gain > {GATE_SE:g} nested_se",
        "judge": ff.judge,
        "folds": k,
        "n_items": ff.n_items,
        "candidates": table,
        "chosen": chosen,
        "nested_gain": gain,
        "nested_se": se,
        "nested_picks": picks,
    }
    reason = f"{what}: {gain:+.4g} vs its standard error {se:.3g} ({ff.n_items} items, judged on {ff.judge})"
    if guard and chosen == OFF:
        reason = "no candidate's cross-validated gain beats its standard error; " + reason
    return _decision(
        estimates, bin_info, selection, chosen, fitted.get(chosen, 0.0), guard, reason,
        gain > 0 and gain > GATE_SE * se,
    )  # fmt: skip


def _decision(
    estimates: dict[str, float],
    bin_info: dict[str, Any] | None,
    selection: dict[str, Any] | None,
    chosen: str,
    fitted: Strength,
    guard: bool,
    reason: str,
    passes: bool = False,
) -> StrengthChoice:
    """Apply ``chosen``'s ``fitted`` strength if the guard is off or the procedure passed -- never
    a fit at the search bound."""
    if chosen != OFF and unbounded(fitted):
        shown = fitted if isinstance(fitted, list) else f"{fitted:.4g}"
        decision = {
            "enabled": guard,
            "passed": False,
            "unbounded": True,
            "reason": f"the {chosen} fit ran to the search bound (mu = {shown}, |mu| = {MU_LIMIT:g}): the "
            "loss still falls there, so the data do not determine a strength; not applied",
        }
        log.warning("calibration: %s", decision["reason"])
    elif not guard:
        decision = {
            "enabled": False,
            "passed": None,
            "reason": f"guard off (--no-guard): {chosen} applied as is; {reason}",
        }
    else:
        decision = {"enabled": True, "passed": bool(passes and chosen != OFF), "reason": reason}
    on = chosen != OFF and decision["passed"] is not False
    if bin_info is not None:
        bin_info["applied"] = on and chosen == BINNED
    if selection is not None:
        selection["applied"] = chosen if on else OFF
    # binned strengths replace mu where applied; the scalar NLL fit is their single-bin form
    mu = (estimates["nll"] if chosen == BINNED else float(fitted)) if on else 0.0
    return StrengthChoice(mu, chosen if on else OFF, estimates, decision, bin_info, selection)


def _binned(stats: TokenStats, bins: int) -> dict[str, Any] | None:
    """Strengths per confidence bin fitted on everything (the ``binned`` candidate): fewer bins
    than asked when the tokens do not fill them (None below 2), and a note when a bin's fit is
    unbounded (then it is no candidate)."""
    if bins < 2:
        return None
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
    if unbounded(fits):
        out["note"] = (
            f"bin strengths at the search bound |mu| = {MU_LIMIT:g} (unbounded fits: the loss of those bins' "
            "tokens still falls there, so they do not determine a strength); not applied"
        )
        log.warning("calibration: confidence-binned strengths %s: %s", fits, out["note"])
    return out
