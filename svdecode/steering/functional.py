"""The steering math of SVDecode, as pure tensor functions.

Every function takes logits of shape ``[..., V]`` (any leading dims), computes in fp32 and in
log-space, and costs O(V) time and memory per row: the V x V Jacobian of eq. 10 is never built.
Equation numbers refer to Hu et al., "Distribution-Aligned Decoding for Efficient LLM Task
Adaptation" (NeurIPS 2025, arXiv 2509.15888); ``../shared/docs/METHOD.md`` (and the README) restate them.

Notation: ``z_phi`` adapted (warm-started) logits, ``z_theta`` base logits,
p = softmax(z), r = log p_phi - log p_theta.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from svdecode.checks import MAX_STRENGTH, check_strength

__all__ = [
    "EPS",
    "MAX_STRENGTH",
    "check_finite",
    "check_strength",
    "steering_vector",
    "confidence_mask",
    "steer_logits",
    "steer_logits_prob_space",
    "logit_arithmetic",
    "token_mu",
    "direction_vector",
    "DIRECTIONS",
    "TokenMu",
    "aggregate_mu",
    "ESTIMATORS",
]

EPS = 1e-12  # eq. 41/43: keeps mu* finite when ||delta|| vanishes


def check_finite(x: torch.Tensor, name: str) -> bool:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or +inf; return True if it holds
    no infinity at all.

    -inf is allowed: it is a legitimate logit (a token a model or a mask forbids).
    """
    # One reduction settles the common case: a finite sum means no NaN and no infinity.
    if bool(torch.isfinite(x.sum(dtype=torch.float32))):
        return True
    if torch.isnan(x).any() or torch.isposinf(x).any():
        n_bad = int((torch.isnan(x) | torch.isposinf(x)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN/+inf value(s); steering needs finite logits")
    return False


def _log_probs(
    logits_adapted: torch.Tensor, logits_base: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """fp32 log-softmax of both logit tensors, and whether neither holds a -inf."""
    if logits_adapted.shape != logits_base.shape:
        raise ValueError(
            f"adapted logits {tuple(logits_adapted.shape)} and base logits {tuple(logits_base.shape)} differ in "
            "shape; base and adapted models must share one vocabulary"
        )
    clean = check_finite(logits_adapted, "adapted logits") & check_finite(logits_base, "base logits")
    if not clean:  # -inf entries: a row of nothing but -inf has no distribution (softmax is NaN)
        for x, name in ((logits_adapted, "adapted"), (logits_base, "base")):
            if bool(torch.isneginf(x).all(dim=-1).any()):
                raise ValueError(
                    f"{name} logits: a row has no finite logit (all -inf): there is no distribution"
                )
    return (
        torch.log_softmax(logits_adapted.float(), dim=-1),
        torch.log_softmax(logits_base.float(), dim=-1),
        clean,
    )


def _ratio_where_p_zero(r: torch.Tensor, p_zero: torch.Tensor) -> torch.Tensor:
    """r with 0 where p_phi = 0 (exactly or by fp32 underflow): such tokens add 0 to KL and delta by
    continuity, but 0 * inf would make the whole row NaN. A base -inf where p_phi > 0 is an
    infinite KL, which no steering step can represent: refuse it."""
    r = torch.where(p_zero, torch.zeros_like(r), r)
    if bool(torch.isposinf(r).any()):
        raise ValueError(
            "the base model gives probability 0 (logit -inf) to a token the adapted model allows: "
            "KL(p_phi || p_theta) is infinite"
        )
    return r


def _log_ratio(logp: torch.Tensor, logq: torch.Tensor, clean: bool) -> torch.Tensor:
    """r = log p_phi - log p_theta (non-destructive; see :func:`_ratio_where_p_zero`)."""
    r = logp - logq
    return r if clean else _ratio_where_p_zero(r, logp.exp() == 0)


def _delta_(logp: torch.Tensor, logq: torch.Tensor, clean: bool | None) -> torch.Tensor | None:
    """delta = -p * (r - KL), computed in the buffers of ``logp`` and ``logq`` (both are consumed).

    Every fresh [B, V] tensor costs an allocation and page faults that dominate the arithmetic on
    CPU, so the ratio, the probabilities and delta reuse the two log-softmax outputs.

    ``clean=None``: the logits were not scanned for non-finite values. Any NaN or infinity in
    either input makes some row's KL NaN or infinite (e.g. p = 0 at a -inf adapted logit gives
    0 * -inf), so a finite KL certifies the row; otherwise None is returned and the caller
    takes the checked path.
    """
    r = logq.neg_().add_(logp)
    p = logp.exp_()
    if clean is False:
        r = _ratio_where_p_zero(r, p == 0)
    kl = torch.linalg.vecdot(p, r).unsqueeze(-1)
    if clean is None and not bool(torch.isfinite(kl).all()):
        return None
    return r.sub_(kl).mul_(p).neg_()


def steering_vector(logits_adapted: torch.Tensor, logits_base: torch.Tensor) -> torch.Tensor:
    """Logit-space steering vector delta = J(p_phi) g (eqs. 8 and 10), in closed form.

    g = -grad_{p_phi} KL(p_phi || p_theta) = -(r + 1) (eq. 8). With J = diag(p) - p p^T and
    J 1 = 0, delta = J g = -p_phi * (r - KL) where KL = sum p_phi r. delta points from p_phi
    back toward p_theta: it is the steepest-descent direction of the KL in logit space.

    Tokens with p_phi = 0 (adapted logit -inf) get delta = 0. Returns fp32, same shape.
    """
    return _delta_(*_log_probs(logits_adapted, logits_base))


def _keep_from_logp(logp: torch.Tensor, alpha: float) -> torch.Tensor:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return torch.ones_like(logp, dtype=torch.bool)
    return logp >= logp.amax(dim=-1, keepdim=True) + math.log(alpha)


def confidence_mask(logits_adapted: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """keep(y) = [p_phi(y) >= alpha * max_y' p_phi(y')] (eq. 12), computed in log-space.

    ``alpha = 0`` keeps every token (the "no mask" ablation). Returns a bool tensor.
    """
    return _keep_from_logp(torch.log_softmax(logits_adapted.float(), dim=-1), alpha)


def _strength(mu: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(mu, numbers.Real):  # a number: svdecode.checks says why (1e39 is finite, not in fp32)
        check_strength(mu, "steering strength")
    mu_t = torch.as_tensor(mu, dtype=torch.float32, device=device)
    if not bool((mu_t.abs() <= MAX_STRENGTH).all()):  # NaN fails the comparison too
        raise ValueError(
            f"steering strength must be a finite number of magnitude at most {MAX_STRENGTH:g} in every row "
            f"(the largest whose fp32 steering step is representable), got {mu}"
        )
    return mu_t


def _apply_mask(
    steered: torch.Tensor, z_phi: torch.Tensor, keep: torch.Tensor, lam: float | None
) -> torch.Tensor:
    """Eq. 13 applied after scaling: masked tokens get lam (or stay at z_phi when lam is None)."""
    if lam is None:
        return torch.where(keep, steered, z_phi)
    return steered.masked_fill_(keep.logical_not_(), float(lam))


def steer_logits(
    logits_adapted: torch.Tensor,
    logits_base: torch.Tensor,
    mu: float | torch.Tensor,
    alpha: float = 0.1,
    lam: float | None = float("-inf"),
) -> torch.Tensor:
    """Steered logits z_hat = z_phi + mu * delta_hat (eqs. 12-14).

    ``lam`` decides what the tokens outside the confidence mask get:
      * ``-inf`` (the paper's default): they end at -inf for any sign of ``mu`` -- the mask is
        applied after scaling, never as ``mu * (-inf)``;
      * a finite float: that logit value (eq. 13 with finite lambda);
      * ``None``: the scoring mode -- kept tokens are steered, the others keep z_phi unchanged,
        so any answer token still has a finite steered log-probability.

    ``mu`` is a scalar or a tensor broadcastable to ``[..., 1]``. Returns fp32 logits.
    """
    mu_t = _strength(mu, logits_adapted.device)
    z_phi = logits_adapted.float()
    delta = None
    if logits_adapted.shape == logits_base.shape:
        # Decoding's hot path: skip the two finiteness scans and let the KL certify the inputs.
        logp = torch.log_softmax(z_phi, dim=-1)
        keep = _keep_from_logp(logp, alpha)
        delta = _delta_(logp, torch.log_softmax(logits_base.float(), dim=-1), None)
    if delta is None:  # -inf logits (handled) or NaN/+inf and shape errors (refused with a message)
        logp, logq, clean = _log_probs(logits_adapted, logits_base)
        keep = _keep_from_logp(logp, alpha)
        delta = _delta_(logp, logq, clean)
    return _apply_mask(delta.mul_(mu_t).add_(z_phi), z_phi, keep, lam)


def steer_logits_prob_space(
    logits_adapted: torch.Tensor,
    logits_base: torch.Tensor,
    mu: float | torch.Tensor,
    alpha: float = 0.1,
    lam: float | None = float("-inf"),
) -> torch.Tensor:
    """Ablation "no logit projection": step in probability space along g = -(r + 1) (eqs. 8-9).

    p_tilde = p_phi + mu * g on the kept tokens, clipped at 0 and renormalised; the signal is
    used without the Jacobian J(p_phi) that maps it to logit space. Returned as
    log-probabilities (usable as logits); clipped tokens get -inf, masked ones follow ``lam``.
    """
    mu_t = _strength(mu, logits_adapted.device)
    logp, logq, clean = _log_probs(logits_adapted, logits_base)
    p = logp.exp()
    g = -(_log_ratio(logp, logq, clean) + 1.0)
    keep = _keep_from_logp(logp, alpha)
    mixed = (p + mu_t * g).clamp_min(0.0) * keep
    total = mixed.sum(dim=-1, keepdim=True)
    # If the step removed all kept mass, fall back to the unsteered kept distribution.
    mixed = torch.where(total > 0, mixed, p * keep)
    out = torch.log(mixed / mixed.sum(dim=-1, keepdim=True))
    if lam is None:  # keep the kept block's total mass, so that masked tokens keep p_phi exactly
        out = out + torch.log((p * keep).sum(dim=-1, keepdim=True))
    return _apply_mask(out, logp, keep, lam)


def logit_arithmetic(
    logits_adapted: torch.Tensor,
    logits_base: torch.Tensor,
    beta: float | torch.Tensor,
    alpha: float = 0.1,
    lam: float | None = float("-inf"),
) -> torch.Tensor:
    """Comparison method: z_phi + beta * (z_phi - z_theta) with the same confidence mask.

    The proxy-tuning / contrastive-decoding family. Differences of *normalised* log-probs are used
    so that a per-row constant in either model's logits cannot leak into the result.
    """
    beta_t = _strength(beta, logits_adapted.device)
    logp, logq, clean = _log_probs(logits_adapted, logits_base)
    keep = _keep_from_logp(logp, alpha)
    z_phi = logits_adapted.float()
    return _apply_mask(z_phi + beta_t * _log_ratio(logp, logq, clean), z_phi, keep, lam)


@dataclass
class TokenMu:
    """Per-token Gauss-Newton pieces of eq. 41: mu* = num / (den + EPS)."""

    mu: torch.Tensor  # [...]   per-token optimal strength mu*_t
    num: torch.Tensor  # [...]  <e_y - p_phi, delta_hat>
    den: torch.Tensor  # [...]  ||delta_hat||^2
    gold_kept: torch.Tensor  # [...] bool: gold token inside the confidence mask


DIRECTIONS = ("kl_gradient", "logit_difference", "probability")


def direction_vector(
    logits_adapted: torch.Tensor, logits_base: torch.Tensor, direction: str = "kl_gradient"
) -> torch.Tensor:
    """The direction a strength multiplies: delta (eq. 10, SVDecode), r = log p_phi - log p_theta
    (logit arithmetic), or g = -(r + 1) (probability-space ablation, eq. 8)."""
    if direction == "kl_gradient":
        return steering_vector(logits_adapted, logits_base)
    r = _log_ratio(*_log_probs(logits_adapted, logits_base))
    if direction == "logit_difference":
        return r
    if direction == "probability":
        return -(r + 1.0)
    raise ValueError(f"unknown direction {direction!r}; choose one of {DIRECTIONS}")


def token_mu(
    logits_adapted: torch.Tensor,
    logits_base: torch.Tensor,
    target_ids: torch.Tensor,
    alpha: float = 0.1,
    direction: str = "kl_gradient",
) -> TokenMu:
    """Per-token optimal steering strength mu*_t (eqs. 41/43), on kept entries only.

    mu*_t = <e_{y_t} - p_phi, delta_hat_t> / (||delta_hat_t||^2 + EPS), where delta_hat is delta
    with masked entries set to 0 (not to lambda = -inf): the least-squares fit of the
    cross-entropy gradient residual e_y - p_phi by mu * delta_hat (Gauss-Newton step). The
    numerator is -d/dmu CE(y_t; z_phi + mu delta_hat) at mu = 0. ``target_ids`` has the leading
    shape of the logits. ``direction`` swaps delta for another direction (see
    :func:`direction_vector`) so comparison methods are calibrated the same way.
    Returns :class:`TokenMu` with fp32 tensors of that leading shape.
    """
    if target_ids.shape != logits_adapted.shape[:-1]:
        raise ValueError(
            f"target_ids shape {tuple(target_ids.shape)} must equal the logits' leading shape "
            f"{tuple(logits_adapted.shape[:-1])}"
        )
    vocab = logits_adapted.shape[-1]
    if target_ids.numel() and (int(target_ids.min()) < 0 or int(target_ids.max()) >= vocab):
        raise ValueError(
            f"target ids must lie in [0, {vocab}); got range [{int(target_ids.min())}, {int(target_ids.max())}]"
        )
    keep = confidence_mask(logits_adapted, alpha)
    delta_hat = direction_vector(logits_adapted, logits_base, direction) * keep
    p = torch.softmax(logits_adapted.float(), dim=-1)
    tgt = target_ids.long().unsqueeze(-1)
    # <e_y - p, d> = d_y - <p, d>, without materialising the one-hot vector.
    num = delta_hat.gather(-1, tgt).squeeze(-1) - (p * delta_hat).sum(-1)
    den = (delta_hat * delta_hat).sum(-1)
    return TokenMu(mu=num / (den + EPS), num=num, den=den, gold_kept=keep.gather(-1, tgt).squeeze(-1))


ESTIMATORS = ("mean", "median", "trimmed", "pooled")


def aggregate_mu(
    num: torch.Tensor | Sequence[float],
    den: torch.Tensor | Sequence[float],
    estimator: str = "mean",
    trim: float = 0.1,
) -> float:
    """Combine per-token pieces into one steering strength mu_bar.

    * ``mean``    -- mean of mu*_t over all target tokens (eq. 44, the paper's choice);
    * ``median``  -- median of mu*_t (eq. 45, robust to heavy tails);
    * ``trimmed`` -- mean after dropping the ``trim`` fraction at each tail (eq. 45);
    * ``pooled``  -- sum(num) / (sum(den) + EPS): the exact minimiser of the summed quadratic
      model over the whole set (eq. 46 applied to the full calibration set).
    """
    num_t = torch.as_tensor(num, dtype=torch.float64).flatten()
    den_t = torch.as_tensor(den, dtype=torch.float64).flatten()
    if num_t.shape != den_t.shape:
        raise ValueError(f"{num_t.numel()} numerators but {den_t.numel()} denominators")
    if num_t.numel() == 0:
        raise ValueError("cannot estimate mu_bar from zero target tokens (empty calibration set?)")
    if estimator == "pooled":
        value = float(num_t.sum() / (den_t.sum() + EPS))
    else:
        mu = num_t / (den_t + EPS)
        if estimator == "mean":
            value = float(mu.mean())
        elif estimator == "median":  # the midpoint for an even count (torch.median takes the lower)
            srt = mu.sort().values
            n = srt.numel()
            value = float((srt[(n - 1) // 2] + srt[n // 2]) / 2)
        elif estimator == "trimmed":
            if not 0.0 <= trim < 0.5:
                raise ValueError(f"trim must be in [0, 0.5), got {trim}")
            srt = mu.sort().values
            k = int(math.floor(trim * srt.numel()))
            value = float(srt[k : srt.numel() - k].mean())
        else:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if not math.isfinite(value):
        raise ValueError(f"mu_bar came out non-finite ({value}) with estimator {estimator!r}")
    return value
