"""The steering strength as an exact, convex 1-D problem: sufficient statistics and objectives.

In the scoring mode (kept tokens steered, the others at z_phi) the steered cross-entropy of one
target token y with adapted logits z and direction d (delta_hat of eq. 13: delta on the kept set
K, 0 elsewhere) is

    CE_t(mu) = log( sum_{i in K} exp(z_i + mu d_i) + sum_{i not in K} exp(z_i) ) - (z_y + mu d_y)

and the calibration loss L(mu) = sum_t CE_t(mu) is convex, with

    L'(mu)  = sum_t ( E_{p_mu}[d] - d_y ),      L''(mu) = sum_t Var_{p_mu}[d]  >= 0,

where p_mu = softmax of the steered logits (d = 0 outside K). At mu = 0, -CE_t'(0) = d_y - <p, d>
is the numerator of the paper's mu*_t (eq. 41/43) and ||d||^2 its Gauss-Newton curvature: mu*_t
is one Gauss-Newton step of CE_t from 0, ``pooled`` one step of L, and their *mean* (eq. 44) is
what heavy tails wreck. Here L is minimised exactly instead.

Everything CE_t(mu) needs for every mu is a few numbers per token (:class:`TokenStats`): log p_phi
and d on the kept entries, the log-mass of the rest, and the gold entry; logits are
shift-invariant, so log p_phi stands in for z. The same statistics of answer options give
multiple-choice scores, and so task metrics, at any mu without touching the model again.

Pure tensors (fp64 for the objective), no model code. Per-token strengths (a tensor ``mu`` of
shape [N]) are accepted everywhere: :func:`fit_binned` uses them for strengths that follow the
adapted model's confidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from svdecode.steering import confidence_mask, direction_vector

# Kept entries stored per token. The confidence mask keeps every token within a factor alpha of
# the top one: for a confident model a handful, for a flat one many. Beyond the cap the smallest
# kept entries are treated as unsteered (counted in ``TokenStats.n_capped``); their delta is
# proportional to their probability, so the error is small when they are.
DEFAULT_CAP = 256
MU_LIMIT = 1e4  # |mu| beyond this is reported as "unbounded": L keeps falling towards infinity
DIRECTION_OF = {"svdecode": "kl_gradient", "logit_arithmetic": "logit_difference"}


@dataclass
class TokenStats:
    """Per target token, what CE_t(mu) needs (module docstring), for N tokens.

    The stored kept entries are ragged: entry e belongs to token ``row[e]`` (a flat layout costs
    the sum of the kept-set sizes, not N times the largest). ``group`` numbers the scored sequence
    (a (prompt, answer) pair) each token belongs to; ``observable`` is log max_i p_phi(i) (the
    adapted model's confidence); ``num``/``den`` are the paper's mu*_t pieces on the full kept set.
    """

    lp: torch.Tensor  # [E] log p_phi of the stored kept entries
    d: torch.Tensor  # [E] direction on those entries
    row: torch.Tensor  # [E] long: the token each entry belongs to
    rest: torch.Tensor  # [N] log of the probability mass not stored (-inf if none)
    lp_gold: torch.Tensor  # [N] log p_phi(y)
    d_gold: torch.Tensor  # [N] d_y (0 when y is not stored)
    group: torch.Tensor  # [N] long
    observable: torch.Tensor  # [N] log max p_phi
    num: torch.Tensor  # [N] d_y - <p, d>      (eq. 41 numerator)
    den: torch.Tensor  # [N] ||d||^2           (eq. 41 denominator)
    gold_kept: torch.Tensor  # [N] bool
    n_capped: int = 0  # tokens whose kept set exceeded the cap
    n_groups: int = 0
    _f64: tuple[torch.Tensor, ...] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.lp_gold.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in (*_ENTRY_COLUMNS, *_TOKEN_COLUMNS))

    @property
    def kept_width(self) -> int:
        """The largest number of stored entries of one token."""
        return int(torch.bincount(self.row, minlength=1).max()) if self.row.numel() else 0

    def select_groups(self, groups: torch.Tensor) -> TokenStats:
        """The tokens of the given groups (group ids kept as they are)."""
        return self.take(torch.isin(self.group, groups))

    def take(self, keep: torch.Tensor) -> TokenStats:
        """The tokens where the [N] bool ``keep`` is true (their entries renumbered)."""
        new_index = torch.cumsum(keep.long(), 0) - 1
        entries = keep[self.row]
        cols = {name: getattr(self, name)[keep] for name in _TOKEN_COLUMNS}
        cols.update(lp=self.lp[entries], d=self.d[entries], row=new_index[self.row[entries]])
        return replace(self, **cols, _f64=None)

    @staticmethod
    def concat(parts: Sequence[TokenStats]) -> TokenStats:
        """Join statistics of consecutive batches; rows and group ids are offset to stay unique."""
        if not parts:
            raise ValueError("no statistics to join")
        cols: dict[str, list[torch.Tensor]] = {name: [] for name in (*_ENTRY_COLUMNS, *_TOKEN_COLUMNS)}
        groups = rows = 0
        for p in parts:
            for name in cols:
                value = getattr(p, name)
                cols[name].append(
                    value + rows if name == "row" else value + groups if name == "group" else value
                )
            groups += p.n_groups
            rows += len(p)
        return TokenStats(
            **{k: torch.cat(v) for k, v in cols.items()},
            n_capped=sum(p.n_capped for p in parts),
            n_groups=groups,
        )


_ENTRY_COLUMNS = ("lp", "d", "row")
_TOKEN_COLUMNS = ("rest", "lp_gold", "d_gold", "group", "observable", "num", "den", "gold_kept")
STATS_COLUMNS = _ENTRY_COLUMNS + _TOKEN_COLUMNS  # every tensor of a TokenStats


def token_stats(
    logits_adapted: torch.Tensor,
    logits_base: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.1,
    method: str = "svdecode",
    cap: int = DEFAULT_CAP,
    group: torch.Tensor | None = None,
) -> TokenStats:
    """Sufficient statistics of N target tokens from their [N, V] adapted and base logits.

    ``method`` picks the direction: "svdecode" (delta, eq. 10) or "logit_arithmetic" (r); both
    steer as z + mu d on the kept set, which is what makes L exact in these statistics.
    """
    if method not in DIRECTION_OF:
        raise ValueError(
            f"method {method!r} is not linear in its strength; use one of {sorted(DIRECTION_OF)}"
        )
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    logp = torch.log_softmax(logits_adapted.float(), dim=-1)
    keep = confidence_mask(logits_adapted, alpha)
    d_full = direction_vector(logits_adapted, logits_base, DIRECTION_OF[method]) * keep
    p = logp.exp()
    tgt = targets.long().unsqueeze(-1)
    num = d_full.gather(-1, tgt).squeeze(-1) - (p * d_full).sum(-1)
    den = (d_full * d_full).sum(-1)
    n_kept = keep.sum(-1)
    width = max(1, min(cap, int(n_kept.max()) if keep.numel() else 1))
    lp_top, idx = logp.masked_fill(~keep, -math.inf).topk(width, dim=-1)
    stored = torch.isfinite(lp_top)
    in_store = torch.zeros_like(keep).scatter_(-1, idx, stored)
    n = targets.shape[0]
    return TokenStats(
        lp=lp_top[stored],
        d=d_full.gather(-1, idx)[stored],
        row=torch.arange(n).unsqueeze(-1).expand_as(idx)[stored],
        rest=logp.masked_fill(in_store, -math.inf).logsumexp(-1),
        lp_gold=logp.gather(-1, tgt).squeeze(-1),
        d_gold=d_full.gather(-1, tgt).squeeze(-1) * in_store.gather(-1, tgt).squeeze(-1),
        group=group if group is not None else torch.zeros(n, dtype=torch.long),
        observable=logp.amax(-1),
        num=num,
        den=den,
        gold_kept=keep.gather(-1, tgt).squeeze(-1),
        n_capped=int((n_kept > width).sum()),
        n_groups=int(group.max()) + 1 if group is not None and group.numel() else 1,
    )


# -- the objective -------------------------------------------------------------------------------


def _as_mu(mu: float | torch.Tensor, n: int) -> torch.Tensor:
    """A 0-d (shared) or [N] (per-token) fp64 strength."""
    m = torch.as_tensor(mu, dtype=torch.float64)
    if m.ndim and m.shape != (n,):
        raise ValueError(f"per-token strengths must have shape ({n},), got {tuple(m.shape)}")
    return m


def _f64(stats: TokenStats) -> tuple[torch.Tensor, ...]:
    """fp64 copies of the columns the objective reads (built once per statistics object)."""
    if stats._f64 is None:
        stats._f64 = tuple(t.double() for t in (stats.lp, stats.d, stats.rest, stats.lp_gold, stats.d_gold))
    return stats._f64


def _log_partition(stats: TokenStats, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per entry: steered log-weight z_e and d_e (fp64); per token: log Z_t (the rest unsteered)."""
    lp, d, rest, _, _ = _f64(stats)
    z = lp + (mu[stats.row] if mu.ndim else mu) * d
    # log-sum-exp per token, shifted by its largest term (any shift is exact: no gradient needed)
    top = rest.scatter_reduce(0, stats.row, z.detach(), reduce="amax")
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (rest - top).exp().index_add(0, stats.row, (z - top[stats.row]).exp())
    return z, d, top + total.log()


def token_logprob(stats: TokenStats, mu: float | torch.Tensor) -> torch.Tensor:
    """[N] steered log-probability of each gold token: -CE_t(mu) (fp64)."""
    m = _as_mu(mu, len(stats))
    _, _, logz = _log_partition(stats, m)
    _, _, _, lp_gold, d_gold = _f64(stats)
    return lp_gold + m * d_gold - logz


def nll(stats: TokenStats, mu: float | torch.Tensor) -> float:
    """L(mu) = sum_t CE_t(mu)."""
    return float(-token_logprob(stats, mu).sum())


def nll_derivatives(stats: TokenStats, mu: float) -> tuple[float, float, float]:
    """(L, L', L'') at a scalar mu (module docstring)."""
    m = _as_mu(mu, len(stats))
    z, d, logz = _log_partition(stats, m)
    w = (z - logz[stats.row]).exp()
    n = len(stats)
    mean = torch.zeros(n, dtype=torch.float64).index_add_(0, stats.row, w * d)
    second = torch.zeros(n, dtype=torch.float64).index_add_(0, stats.row, w * d * d)
    _, _, _, lp_gold, d_gold = _f64(stats)
    lp = lp_gold + m * d_gold - logz
    var = (second - mean * mean).clamp_min(0)
    return float(-lp.sum()), float((mean - d_gold).sum()), float(var.sum())


def group_scores(stats: TokenStats, mu: float | torch.Tensor) -> torch.Tensor:
    """[n_groups] summed steered log-probability of each scored sequence (e.g. each MC option)."""
    out = torch.zeros(stats.n_groups, dtype=torch.float64)
    return out.index_add_(0, stats.group, token_logprob(stats, mu))


@dataclass
class Minimum:
    """The exact minimiser of L: ``mu``, and whether L was still falling at the search limit."""

    mu: float
    nll: float
    nll_at_zero: float
    iterations: int
    unbounded: bool = False


def minimise_nll(
    stats: TokenStats, tol: float = 1e-6, limit: float = MU_LIMIT, max_iter: int = 200
) -> Minimum:
    """The exact minimiser of the convex L(mu): safeguarded Newton on L' = 0.

    A bracket [a, b] with L'(a) < 0 < L'(b) is grown from 0 in the descent direction (doubling
    steps, starting from the Newton step); then Newton steps that leave the bracket, or stall,
    are replaced by bisection. Stops when the bracket is narrower than ``tol * max(1, |mu|)``.
    If L' keeps its sign up to ``|mu| = limit``, or underflows to 0 on the way, the minimum lies at
    infinity: the last point is returned with ``unbounded=True``.
    """
    if len(stats) == 0:
        raise ValueError("no target tokens: the calibration statistics are empty")
    l0, g0, h0 = nll_derivatives(stats, 0.0)
    if g0 == 0.0:
        return Minimum(0.0, l0, l0, 0)
    sign = -math.copysign(1.0, g0)
    step = min(abs(g0) / h0 if h0 > 0 else 1.0, limit)
    a, b, it = 0.0, sign * step, 0
    while True:
        _, gb, _ = nll_derivatives(stats, b)
        it += 1
        if gb == 0.0:  # L' underflowed before changing sign: L flattens out towards infinity
            return Minimum(b, nll(stats, b), l0, it, unbounded=True)
        if math.copysign(1.0, gb) != math.copysign(1.0, g0):
            break
        if abs(b) >= limit:
            return Minimum(b, nll(stats, b), l0, it, unbounded=True)
        a, b = b, sign * min(abs(b) * 2.0, limit)
    lo, hi = (a, b) if a < b else (b, a)
    mu = b
    while it < max_iter:
        _, g, h = nll_derivatives(stats, mu)
        it += 1
        if g == 0.0:
            break
        if g > 0:
            hi = mu
        else:
            lo = mu
        step = -g / h if h > 0 else math.inf
        if lo < mu + step < hi:
            mu += step
            if abs(step) <= tol * max(1.0, abs(mu)):
                break
        else:
            mu = 0.5 * (lo + hi)
        if hi - lo <= tol * max(1.0, abs(mu)):
            break
    return Minimum(mu, nll(stats, mu), l0, it)


# -- task metrics and 1-D search ------------------------------------------------------------------


def search_grid(anchors: Sequence[float] = (), limit: float = 1e3, per_decade: int = 12) -> list[float]:
    """0, +-logspace(1e-3, limit) and the given anchors (e.g. every estimator's mu): the points a
    piecewise-constant task metric is searched on."""
    n = int(round(math.log10(limit / 1e-3) * per_decade)) + 1
    mags = [1e-3 * (limit / 1e-3) ** (i / (n - 1)) for i in range(n)]
    pts = {0.0, *mags, *(-m for m in mags), *(float(a) for a in anchors if math.isfinite(a))}
    return sorted(pts)


def maximise(metric: Callable[[float], float], grid: Sequence[float], refine: int = 8) -> tuple[float, float]:
    """The mu on ``grid`` (refined between the best point's neighbours) that maximises ``metric``;
    ties go to the smallest |mu| (the least steering that achieves the best)."""
    grid = sorted(set(grid))
    values = [metric(m) for m in grid]
    best = max(values)
    i = min((j for j, v in enumerate(values) if v == best), key=lambda j: abs(grid[j]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    fine = [lo + (hi - lo) * k / (refine + 1) for k in range(1, refine + 1)]
    cand = [(values[i], grid[i])] + [(metric(m), m) for m in fine]
    top = max(v for v, _ in cand)
    mu = min((m for v, m in cand if v == top), key=abs)
    return mu, top


def fit_binned(stats: TokenStats, edges: Sequence[float], tol: float = 1e-6) -> list[Minimum]:
    """One exact NLL minimiser per confidence bin: L(mu_1..mu_B) = sum_b L_b(mu_b) is separable, so
    each bin's strength is the minimiser of its own tokens' loss (convex in the vector)."""
    idx = bin_index(stats.observable, edges)
    out = []
    for b in range(len(edges) + 1):
        part = stats.take(idx == b)
        out.append(minimise_nll(part, tol) if len(part) else Minimum(0.0, 0.0, 0.0, 0))
    return out


def bin_index(observable: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Bin of each observable value: 0 below edges[0], ..., len(edges) at or above edges[-1]."""
    return torch.bucketize(observable.double(), torch.as_tensor(list(edges), dtype=torch.float64), right=True)


def binned_mu(observable: torch.Tensor, edges: Sequence[float], mus: Sequence[float]) -> torch.Tensor:
    """Per-token strengths from bins of the observable."""
    return torch.as_tensor(list(mus), dtype=torch.float64)[bin_index(observable, edges)]


def paper_estimate(stats: TokenStats, estimator: str, trim: float = 0.1) -> float:
    """The paper's estimators (eqs. 44-46) from the same statistics."""
    from svdecode.steering import aggregate_mu

    return aggregate_mu(stats.num, stats.den, estimator, trim=trim)


__all__ = [
    "DEFAULT_CAP",
    "Minimum",
    "TokenStats",
    "bin_index",
    "binned_mu",
    "fit_binned",
    "group_scores",
    "maximise",
    "minimise_nll",
    "nll",
    "nll_derivatives",
    "paper_estimate",
    "search_grid",
    "token_logprob",
    "token_stats",
]
