"""The calibration objectives: each turns calibration statistics into one steering strength.

All are computed every time from the same :class:`~svdecode.calibration.strength.TokenStats`:

* ``choice``  -- the mu minimising the summed -log probability mass the steered option scores give
  each calibration item's correct option(s) among its options (a smooth form of the task metric:
  TruthfulQA's normalised MC2, the softmax cross-entropy of single-answer sets), by a global
  search over a log grid of both signs refined locally; needs :class:`ChoiceItem` s;
* ``nll``     -- the exact minimiser of the calibration loss L(mu) (:func:`strength.minimise_nll`);
* ``task``    -- the mu that maximises the task's own metric on the calibration choices (e.g.
  TruthfulQA MC average, or choice accuracy), by 1-D search; needs choices;
* ``mean``, ``median``, ``trimmed``, ``pooled`` -- the paper's estimators (eqs. 44-46);
* per-bin exact-NLL strengths of the adapted model's confidence (:func:`confidence_edges`,
  :func:`strength.fit_binned`).

Which one is applied, and whether steering is on at all, is decided by :mod:`svdecode.calibration.selection`.
Pure tensors and numbers, no model code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from svdecode.calibration.strength import (
    MU_LIMIT,
    TokenStats,
    group_scores,
    maximise,
    minimise_nll,
    paper_estimate,
    search_grid,
)
from svdecode.steering import ESTIMATORS

# every objective whose fit is one scalar strength (the ``--objective`` names that force one)
OBJECTIVES = ("choice", "nll", "task", *ESTIMATORS)
SELECT = "auto"  # the default: choose among the candidates (svdecode.calibration.selection)
DEFAULT_OBJECTIVE = SELECT
BINNED, OFF = "binned", "off"  # the confidence-binned NLL fit; steering off
CHOOSABLE = (SELECT, *OBJECTIVES, BINNED)  # what --objective accepts: choose, or force one candidate
APPLIED = (*OBJECTIVES, BINNED, OFF)  # what an artifact's "objective" may say was applied
# The calibration defaults (:class:`svdecode.calibration.config.CalibrationConfig` carries them).
DEFAULT_FOLDS = 5  # the cross-validation folds of the selection and the guard
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
    # per-item arrays by scalar strength: the folds' searches revisit the same grid
    _cache: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict, repr=False)
    _index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def scores(self, mu: float | torch.Tensor) -> list[float]:
        """Every option's summed steered log-probability at ``mu``."""
        return self._scores(mu).tolist()

    def _scores(self, mu: float | torch.Tensor) -> torch.Tensor:
        if isinstance(mu, torch.Tensor):
            return group_scores(self.stats, mu)
        key = ("scores", float(mu))
        if key not in self._cache:
            self._cache[key] = group_scores(self.stats, float(mu))
        return self._cache[key]

    def item_array(self, mu: float | torch.Tensor) -> torch.Tensor:
        """The task metric of every item at strength ``mu`` (cached for a scalar ``mu``)."""
        key = ("metric", float(mu)) if not isinstance(mu, torch.Tensor) else None
        if key in self._cache:
            return self._cache[key]
        scores = self._scores(mu).tolist()
        out = torch.tensor(
            [
                self.metric(it, scores[o : o + len(it.options)])
                for it, o in zip(self.items, self.offsets, strict=True)
            ],
            dtype=torch.float64,
        )
        if key is not None:
            self._cache[key] = out
        return out

    def item_values(self, mu: float | torch.Tensor, which: Sequence[int] | None = None) -> list[float]:
        """The task metric of each item (or of the items ``which``) at strength ``mu``."""
        vals = self.item_array(mu)
        return (vals if which is None else vals[list(which)]).tolist()

    def value(self, mu: float | torch.Tensor, which: Sequence[int] | None = None) -> float:
        vals = self.item_array(mu)
        vals = vals if which is None else vals[list(which)]
        return float(vals.mean()) if len(vals) else math.nan

    def choice_losses(self, mu: float | torch.Tensor) -> torch.Tensor:
        """Per item, -log of the steered probability mass of its correct options among all its
        options (the softmax of the option scores): TruthfulQA's normalised MC2 over true and false
        answers, the cross-entropy of the gold option for single-answer sets; 0 for an item with
        no correct option (nothing to gain)."""
        key = ("choice", float(mu)) if not isinstance(mu, torch.Tensor) else None
        if key in self._cache:
            return self._cache[key]
        item, true, has_true = self._groups()
        s = self._scores(mu)
        out = _segment_logsumexp(s, item, len(self.items)) - _segment_logsumexp(
            s.masked_fill(~true, -math.inf), item, len(self.items)
        )
        out = torch.where(has_true, out, torch.zeros_like(out))
        if key is not None:
            self._cache[key] = out
        return out

    def _groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The item of every option (group), whether it is correct, and which items have a correct one."""
        if self._index is None:
            item = torch.cat([torch.full((len(it.options),), i) for i, it in enumerate(self.items)])
            true = torch.tensor([lab == 1 for it in self.items for lab in it.labels])
            self._index = item, true, torch.tensor([1 in it.labels for it in self.items])
        return self._index


def _segment_logsumexp(x: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """log-sum-exp of ``x`` within each of ``n`` segments (``seg[i]`` is x[i]'s); -inf when empty."""
    top = torch.full((n,), -math.inf, dtype=x.dtype).scatter_reduce(0, seg, x, reduce="amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros(n, dtype=x.dtype).index_add_(0, seg, (x - shift[seg]).exp())
    return shift + total.log()


# -- fitting ------------------------------------------------------------------------------------


def minimise_choice(
    choices: ChoiceStats, which: Sequence[int] | None, grid: Sequence[float], tol: float = 1e-2
) -> float:
    """The mu minimising the summed choice loss of the items ``which``: the best point of ``grid``
    (the loss is not convex in general, so a global look first), then golden-section search between
    its neighbours to ``tol * max(1, |mu|)``; ties go to the smallest |mu|."""
    rows = slice(None) if which is None else list(which)

    def loss(m: float) -> float:
        return float(choices.choice_losses(m)[rows].sum())

    grid = sorted(set(grid))
    values = [loss(m) for m in grid]
    best = min(values)
    i = min((j for j, v in enumerate(values) if v == best), key=lambda j: abs(grid[j]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol * max(1.0, abs(grid[i])):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    mu, top = (a, fa) if fa <= fb else (b, fb)
    return mu if top < best else grid[i]


def fit_all(
    stats: TokenStats,
    choices: ChoiceStats | None,
    which: Sequence[int] | None = None,
    trim: float = DEFAULT_TRIM,
) -> dict[str, float]:
    """The strength every objective picks from ``stats`` (and the choice items ``which``); the
    searches of ``choice`` and ``task`` are anchored at the others' strengths, so they always
    consider them."""
    out = {"nll": minimise_nll(stats).mu, **{e: paper_estimate(stats, e, trim) for e in ESTIMATORS}}
    if choices is not None:
        grid = search_grid(list(out.values()))
        out["choice"] = minimise_choice(choices, which, grid)
        out["task"] = maximise(lambda m: choices.value(m, which), grid)[0]
    return {o: out[o] for o in OBJECTIVES if o in out}


def confidence_edges(stats: TokenStats, bins: int) -> list[float]:
    """Bin edges of the confidence observable at its calibration quantiles."""
    qs = [k / bins for k in range(1, bins)]
    return [float(stats.observable.double().quantile(q)) for q in qs]
