"""svdecode.calibration.strength: the sufficient statistics against full-vocabulary steered logits, L' and L''
against autograd, the exact minimiser against a brute-force grid, and the 1-D search."""

from __future__ import annotations

import math

import pytest
import torch

from svdecode.calibration.strength import (
    TokenStats,
    binned_mu,
    fit_binned,
    group_scores,
    maximise,
    minimise_nll,
    nll,
    nll_derivatives,
    paper_estimate,
    search_grid,
    token_logprob,
    token_stats,
)
from svdecode.steering import aggregate_mu, logit_arithmetic, steer_logits, token_mu

STEER = {"svdecode": steer_logits, "logit_arithmetic": logit_arithmetic}


def logits(n=40, vocab=30, seed=0, shift=1.0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    za = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * scale
    zb = za + shift * torch.randn(n, vocab, generator=gen, dtype=torch.float64)
    y = torch.randint(0, vocab, (n,), generator=gen)
    return za, zb, y


def full_logprob(za, zb, y, mu, alpha, method="svdecode"):
    """Reference: the steered log-prob of y from full-vocabulary steered logits (scoring mode)."""
    z = STEER[method](za, zb, mu, alpha=alpha, lam=None).double()
    return torch.log_softmax(z, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("method", ["svdecode", "logit_arithmetic"])
@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("mu", [-7.0, -0.5, 0.0, 0.3, 4.0])
def test_statistics_give_the_full_vocabulary_steered_logprob(method, alpha, mu):
    za, zb, y = logits(seed=int(10 * alpha) + 1)
    stats = token_stats(za, zb, y, alpha=alpha, method=method, cap=64)
    assert stats.n_capped == 0
    want = full_logprob(za, zb, y, mu, alpha, method)
    assert torch.allclose(token_logprob(stats, mu), want, atol=2e-5)
    assert nll(stats, mu) == pytest.approx(-float(want.sum()), abs=1e-3)


def test_per_token_strengths_equal_per_row_steering():
    za, zb, y = logits(n=12, seed=3)
    mu = torch.linspace(-3, 3, 12, dtype=torch.float64)
    stats = token_stats(za, zb, y, alpha=0.1)
    want = full_logprob(za, zb, y, mu.unsqueeze(-1).float(), 0.1)
    assert torch.allclose(token_logprob(stats, mu), want, atol=2e-5)
    with pytest.raises(ValueError, match="shape"):
        token_logprob(stats, mu[:5])


@pytest.mark.parametrize("mu", [-4.0, 0.0, 0.7, 9.0])
def test_first_and_second_derivatives_match_autograd(mu):
    za, zb, y = logits(seed=5)
    stats = token_stats(za, zb, y, alpha=0.1)
    m = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    loss = -token_logprob(stats, m).sum()
    (g,) = torch.autograd.grad(loss, m, create_graph=True)
    (h,) = torch.autograd.grad(g, m)
    value, d1, d2 = nll_derivatives(stats, mu)
    assert value == pytest.approx(float(loss.detach()), rel=1e-12)
    assert d1 == pytest.approx(float(g.detach()), rel=1e-9, abs=1e-9)
    assert d2 == pytest.approx(float(h), rel=1e-9, abs=1e-9)
    assert d2 >= 0  # convex


def test_derivative_at_zero_is_minus_the_summed_paper_numerators():
    za, zb, y = logits(seed=8)
    stats = token_stats(za, zb, y, alpha=0.1)
    tm = token_mu(za.float(), zb.float(), y, alpha=0.1)
    _, d1, _ = nll_derivatives(stats, 0.0)
    assert d1 == pytest.approx(-float(tm.num.double().sum()), rel=1e-4)
    for est in ("mean", "median", "trimmed", "pooled"):
        assert paper_estimate(stats, est) == pytest.approx(aggregate_mu(tm.num, tm.den, est), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_minimiser_beats_a_brute_force_grid_over_full_vocabulary_logits(seed):
    za, zb, y = logits(n=30, seed=seed, shift=1.5)
    stats = token_stats(za, zb, y, alpha=0.1)
    m = minimise_nll(stats)
    assert not m.unbounded
    grid = torch.linspace(m.mu - 5, m.mu + 5, 2001, dtype=torch.float64)
    brute = torch.tensor([-float(full_logprob(za, zb, y, float(g), 0.1).sum()) for g in grid])
    best = float(grid[brute.argmin()])
    assert abs(m.mu - best) <= float(grid[1] - grid[0])  # within one grid step of the brute force
    assert m.nll <= float(brute.min()) + 1e-6
    assert abs(nll_derivatives(stats, m.mu)[1]) < 1e-6 * max(1.0, abs(m.mu)) * len(stats)
    assert m.nll <= m.nll_at_zero


def test_minimiser_converges_to_1e6_from_either_side_and_reports_unbounded():
    za, zb, y = logits(n=50, seed=11, shift=2.0)
    stats = token_stats(za, zb, y, alpha=0.2)
    a = minimise_nll(stats, tol=1e-9)
    b = minimise_nll(stats, tol=1e-6)
    assert abs(a.mu - b.mu) <= 1e-6 * max(1.0, abs(a.mu))
    # only the gold token kept, and it is steered up: L falls for ever as mu grows
    vocab = 6
    za = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * 3, dtype=torch.float64)
    zb = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]] * 3, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    stats = token_stats(za, zb, y, alpha=0.5)
    assert stats.kept_width == 1 and vocab == za.shape[1]
    m = minimise_nll(stats, limit=10.0)
    assert m.unbounded and abs(m.mu) == pytest.approx(10.0)
    assert m.nll < m.nll_at_zero
    far = minimise_nll(stats)  # L' underflows to 0 long before the default limit
    assert far.unbounded and abs(far.mu) > 10 and far.nll < m.nll


def test_cap_counts_tokens_and_stays_consistent():
    za, zb, y = logits(n=20, vocab=50, seed=2, scale=0.3)  # flat: many tokens kept
    stats = token_stats(za, zb, y, alpha=0.1, cap=4)
    assert stats.n_capped > 0 and stats.kept_width == 4
    # mu = 0 is exact whatever the cap: nothing is steered
    assert torch.allclose(token_logprob(stats, 0.0), full_logprob(za, zb, y, 0.0, 0.1), atol=1e-6)
    full = token_stats(za, zb, y, alpha=0.1, cap=64)
    assert full.n_capped == 0
    assert stats.nbytes < full.nbytes


def test_group_scores_sum_tokens_per_sequence_and_concat_offsets_groups():
    za, zb, y = logits(n=10, seed=4)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    a = token_stats(za[:6], zb[:6], y[:6], group=group[:6])
    b = token_stats(za[6:], zb[6:], y[6:], group=group[6:] - 2)
    both = TokenStats.concat([a, b])
    assert both.n_groups == 3 + 2 and both.group.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 4]
    lp = full_logprob(za, zb, y, 1.5, 0.1)
    want = [float(lp[both.group == g].sum()) for g in range(5)]
    assert group_scores(both, 1.5).tolist() == pytest.approx(want, abs=1e-5)
    sub = both.select_groups(torch.tensor([1, 3]))
    assert len(sub) == 5 and sub.group.unique().tolist() == [1, 3]


def test_binned_strengths_are_separable_and_never_worse_than_one_strength():
    za, zb, y = logits(n=80, seed=6, shift=2.0)
    stats = token_stats(za, zb, y, alpha=0.1)
    edges = [float(stats.observable.quantile(q)) for q in (1 / 3, 2 / 3)]
    fits = fit_binned(stats, edges)
    per_token = binned_mu(stats.observable, edges, [f.mu for f in fits])
    one = minimise_nll(stats)
    assert nll(stats, per_token) <= one.nll + 1e-9
    idx = torch.bucketize(stats.observable, torch.tensor(edges, dtype=stats.observable.dtype), right=True)
    for b, fit in enumerate(fits):
        assert fit.mu == pytest.approx(minimise_nll(stats.take(idx == b)).mu)


def test_maximise_prefers_the_smallest_strength_among_ties():
    def step(mu):  # best (1.0) on [2, 5] and on [-6, -3]
        return 1.0 if 2 <= mu <= 5 or -6 <= mu <= -3 else 0.0

    mu, value = maximise(step, search_grid(limit=100))
    assert value == 1.0 and 2 <= mu <= 2.5
    assert maximise(lambda m: 0.0, search_grid())[0] == 0.0
    grid = search_grid(anchors=[3.14159, math.nan])
    assert 3.14159 in grid and 0.0 in grid and all(math.isfinite(g) for g in grid)
