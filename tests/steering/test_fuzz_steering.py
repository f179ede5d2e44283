"""Property tests (hypothesis) of the steering math and the statistics-based calibration: random
logits of random shapes and dtypes (fp64, fp32, bf16, fp16), with -inf entries, extreme values and
ties. Outputs are finite where they must be, the mask and sign rules hold, and the O(V) functions
equal float64 V x V Jacobian references on small V. The number of examples follows the hypothesis
profile (conftest: ``ci`` by default, ``deep`` in scripts/fuzz.sh)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from svdecode.calibration.strength import nll, token_logprob, token_stats
from svdecode.steering import (
    confidence_mask,
    logit_arithmetic,
    steer_logits,
    steer_logits_prob_space,
    steering_vector,
    token_mu,
)

NEG_INF = float("-inf")
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# values a logit row may hold: ordinary, ties (a few repeated values), extremes of each dtype's range
ORDINARY = st.floats(-30, 30, allow_nan=False, width=32)
TIES = st.sampled_from([0.0, 1.0, 2.5, -3.0])


def _extreme(dtype: torch.dtype) -> st.SearchStrategy[float]:
    top = 6e4 if dtype == torch.float16 else 1e4
    return st.sampled_from([top, -top, top / 2, -top / 3])


@st.composite
def logit_pairs(
    draw, max_vocab: int = 12, inf: bool = True, extreme: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(adapted, base) logits of one random shape and dtype; -inf only where a row keeps a finite
    entry, and in the base only where the adapted logit is -inf too (else the KL is infinite)."""
    dtype = draw(st.sampled_from(DTYPES))
    vocab = draw(st.integers(2, max_vocab))
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    n = math.prod(lead) * vocab
    value = st.one_of(ORDINARY, TIES, _extreme(dtype)) if extreme else st.one_of(ORDINARY, TIES)
    za = torch.tensor(draw(st.lists(value, min_size=n, max_size=n)), dtype=torch.float64).view(*lead, vocab)
    shift = torch.tensor(
        draw(st.lists(st.one_of(ORDINARY, TIES), min_size=n, max_size=n)), dtype=torch.float64
    )
    zb = za + shift.view_as(za)
    if inf:
        holes = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).view_as(za)
        holes &= za < za.amax(-1, keepdim=True)  # every row keeps its largest entry finite
        za = za.masked_fill(holes, NEG_INF)
        zb = zb.masked_fill(holes & torch.tensor(draw(st.booleans())), NEG_INF)
    return za.to(dtype), zb.to(dtype)


def _reference_delta(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """delta = J(p_phi) g with the explicit V x V Jacobian J = diag(p) - p p^T and g = -(r + 1)
    (eqs. 8, 10), in float64; r = 0 where p_phi = 0."""
    lp, lq = torch.log_softmax(za.double(), -1), torch.log_softmax(zb.double(), -1)
    p = lp.exp()
    r = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
    jac = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return (jac @ (-(r + 1)).unsqueeze(-1)).squeeze(-1)


def _scale(za: torch.Tensor, zb: torch.Tensor) -> float:
    """The largest finite |logit|: fp32 rounding of the log-probabilities grows with it."""
    both = torch.cat([za.double().flatten(), zb.double().flatten()])
    return float(both[torch.isfinite(both)].abs().max())


@given(logit_pairs())
def test_steering_vector_is_finite_and_equals_the_jacobian_reference(pair):
    za, zb = pair
    delta = steering_vector(za, zb)
    assert delta.dtype == torch.float32 and delta.shape == za.shape
    assert bool(torch.isfinite(delta).all())
    assert bool((delta[torch.isneginf(za)] == 0).all())  # p_phi = 0: no step
    ref = _reference_delta(za, zb)
    assert torch.allclose(delta.double(), ref, rtol=1e-4, atol=1e-5 * (1 + _scale(za, zb)))
    assert torch.allclose(delta.double().sum(-1), torch.zeros(()).double(), atol=1e-4 * (1 + _scale(za, zb)))


@given(logit_pairs(inf=False))
def test_delta_is_the_steepest_descent_of_the_kl_in_logit_space(pair):
    """Sign rule: moving the adapted logits along delta lowers KL(p_phi || p_theta) at rate
    -||delta||^2 (autograd in float64 on the function's own output)."""
    za, zb = pair
    delta = steering_vector(za, zb).double()
    z = za.double().clone().requires_grad_(True)
    lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zb.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum()
    (grad,) = torch.autograd.grad(kl, z)
    slope = (grad * delta).sum()
    want = -(delta * delta).sum()
    assert slope <= 1e-6 * (1 + _scale(za, zb))
    assert float(slope) == pytest.approx(float(want), rel=1e-3, abs=1e-5 * (1 + _scale(za, zb)) ** 2)


MUS = st.one_of(st.floats(-50, 50), st.sampled_from([0.0, -1e3, 1e3, 1e30, -1e30]))
ALPHAS = st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0, 1))


@given(logit_pairs(), MUS, ALPHAS, st.sampled_from([NEG_INF, -5.0, None]))
def test_steered_logits_follow_the_mask_rule_and_stay_finite_on_kept_tokens(pair, mu, alpha, lam):
    za, zb = pair
    out = steer_logits(za, zb, mu, alpha=alpha, lam=lam)
    keep = confidence_mask(za, alpha)
    z_phi = za.float()
    # the mask: p_phi(y) >= alpha * max p_phi, checked in float64 away from the boundary
    lp = torch.log_softmax(za.double(), -1)
    margin = lp - (lp.amax(-1, keepdim=True) + (math.log(alpha) if alpha > 0 else NEG_INF))
    clear = margin.abs() > 1e-4
    assert bool((keep[clear] == (margin >= 0)[clear]).all())
    kept_finite = keep & torch.isfinite(z_phi)
    assert bool(torch.isfinite(out[kept_finite]).all())
    delta = steering_vector(za, zb)
    want = z_phi + torch.tensor(mu, dtype=torch.float32) * delta
    assert torch.allclose(out[kept_finite], want[kept_finite], rtol=1e-5, atol=1e-4)
    if lam is None:  # scoring mode: masked tokens keep z_phi
        assert torch.equal(out[~keep], z_phi[~keep])
    else:  # -inf (the paper, for either sign of mu) or the given value
        assert bool((out[~keep] == lam).all())


@given(logit_pairs(), MUS, ALPHAS)
def test_comparison_methods_are_finite_on_kept_tokens(pair, mu, alpha):
    za, zb = pair
    keep = confidence_mask(za, alpha) & torch.isfinite(za.float())
    beta = max(-1e3, min(1e3, mu))  # logit arithmetic scales r itself (up to ~1e4): |beta| <= 1e3
    assert bool(torch.isfinite(logit_arithmetic(za, zb, beta, alpha=alpha)[keep]).all())
    prob = steer_logits_prob_space(za, zb, mu, alpha=alpha, lam=None)
    assert not bool(torch.isnan(prob).any()) and not bool(torch.isposinf(prob).any())


@given(logit_pairs(), st.data())
def test_token_mu_equals_the_jacobian_reference(pair, data):
    za, zb = pair
    alpha = data.draw(ALPHAS)
    lead = za.shape[:-1]
    finite_top = za.double().argmax(-1)  # a valid target in every row
    y = torch.tensor(data.draw(st.lists(st.integers(0, za.shape[-1] - 1), min_size=lead.numel(),
                                        max_size=lead.numel())), dtype=torch.long).view(lead)  # fmt: skip
    y = torch.where(torch.isneginf(za.double().gather(-1, y.unsqueeze(-1)).squeeze(-1)), finite_top, y)
    got = token_mu(za, zb, y, alpha=alpha)
    keep = confidence_mask(za, alpha)
    d_hat = _reference_delta(za, zb) * keep
    p = torch.softmax(za.double(), -1)
    num = d_hat.gather(-1, y.unsqueeze(-1)).squeeze(-1) - (p * d_hat).sum(-1)
    den = (d_hat * d_hat).sum(-1)
    tol = 1e-4 * (1 + _scale(za, zb)) ** 2
    assert torch.allclose(got.num.double(), num, rtol=1e-3, atol=tol)
    assert torch.allclose(got.den.double(), den, rtol=1e-3, atol=tol)
    assert bool(torch.isfinite(got.mu).all())


@given(logit_pairs(), st.integers(0, 2))
def test_an_infinite_kl_is_refused_with_a_message(pair, row_pick):
    """A base -inf on a token the adapted model allows (its top token) is refused, never NaN (a
    base row left with no finite logit at all is refused as such: found by the deep run)."""
    za, zb = pair
    rows = za.reshape(-1, za.shape[-1]).clone()
    base = zb.reshape(-1, zb.shape[-1]).clone()
    r = row_pick % rows.shape[0]
    base[r, rows[r].double().argmax()] = NEG_INF
    with pytest.raises(ValueError, match="KL|no finite logit"):
        steering_vector(rows, base)
    with pytest.raises(ValueError, match="KL|no finite logit"):
        steer_logits(rows, base, 1.0)


@given(st.integers(2, 9), st.sampled_from(DTYPES))
def test_a_row_of_only_minus_inf_is_refused(vocab, dtype):
    """A row with no finite logit has no distribution: refused with a message, never NaN."""
    za = torch.randn(2, vocab, dtype=torch.float64).to(dtype)
    za[1] = NEG_INF
    for fn in (steering_vector, lambda a, b: steer_logits(a, b, 1.0)):
        with pytest.raises(ValueError, match="no finite logit"):
            fn(za, za)


# -- statistics-based calibration -------------------------------------------------------------


@given(logit_pairs(max_vocab=10, inf=False, extreme=False), st.data())
def test_statistics_give_the_direct_steered_score_at_random_mu(pair, data):
    """nll(stats, mu) and the per-token log-probs from the sufficient statistics equal scoring
    with the full steered logits (scoring mode, lam=None) at a random mu."""
    za, zb = (x.double().reshape(-1, x.shape[-1]) for x in pair)
    n, vocab = za.shape
    alpha = data.draw(ALPHAS)
    mu = data.draw(st.floats(-20, 20))
    y = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)))
    stats = token_stats(za, zb, y, alpha=alpha)
    direct = torch.log_softmax(steer_logits(za, zb, mu, alpha=alpha, lam=None).double(), -1)
    want = direct.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    tol = 1e-4 * (1 + abs(mu)) * (1 + _scale(za, zb))
    assert torch.allclose(token_logprob(stats, mu), want, atol=tol)
    assert nll(stats, mu) == pytest.approx(-float(want.sum()), abs=n * tol)
