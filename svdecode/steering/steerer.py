"""The steering object: a combine rule and its settings, called on the two streams' logits.

As with transformers' ``LogitsProcessor``, an instance carries its settings and is called on logits;
it is validated when built, immutable, and a per-request variant is just another instance
(:meth:`Steerer.replace`). :data:`RULES` holds the combine rules by name, so a new rule is one
:func:`register_rule` entry. The evaluation's ablations are rules with settings: "no projection"
is ``prob_space``, "no mask" is ``alpha=0``, the lam variants are ``lam``.

:class:`BatchSteerer` steers a batch whose rows carry different steerers (the server's micro-batches).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from svdecode.errors import SvdecodeError
from svdecode.steering import functional

__all__ = [
    "RULES",
    "BatchSteerer",
    "CombineRule",
    "Steerer",
    "SteeringError",
    "StrengthBins",
    "register_rule",
]

NEG_INF = float("-inf")

# A rule's function: (z_phi, z_theta, mu, alpha, lam) -> fp32 logits of z_phi's shape; mu is a float
# or a tensor broadcastable to [..., 1] (per-row or per-bin strengths).
CombineFn = Callable[[torch.Tensor, torch.Tensor, float | torch.Tensor, float, float | None], torch.Tensor]


class SteeringError(SvdecodeError, ValueError):
    """A steering setting out of its range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"steering field {field!r}: {message}")
        self.field = field


@dataclass(frozen=True)
class CombineRule:
    """One way of combining the two distributions. ``strength``: the rule reads ``mu``;
    ``binned``: per-confidence-bin strengths apply to it."""

    name: str
    fn: CombineFn
    description: str
    strength: bool = True
    binned: bool = False


RULES: dict[str, CombineRule] = {}


def register_rule(
    name: str, description: str, *, strength: bool = True, binned: bool = False
) -> Callable[[CombineFn], CombineFn]:
    """Decorator adding ``fn`` to :data:`RULES` as ``name`` (a name is registered once)."""

    def add(fn: CombineFn) -> CombineFn:
        if name in RULES:
            raise ValueError(f"a combine rule {name!r} is already registered")
        RULES[name] = CombineRule(name, fn, description, strength, binned)
        return fn

    return add


@register_rule("svdecode", "z_phi + mu * delta_hat (eqs. 12-14)", binned=True)
def _svdecode(z_phi, z_theta, mu, alpha, lam):
    return functional.steer_logits(z_phi, z_theta, mu, alpha=alpha, lam=lam)


@register_rule("prob_space", "ablation 'no projection': a step in probability space (eq. 9)")
def _prob_space(z_phi, z_theta, mu, alpha, lam):
    return functional.steer_logits_prob_space(z_phi, z_theta, mu, alpha=alpha, lam=lam)


@register_rule("logit_arithmetic", "z_phi + mu (log p_phi - log p_theta), same mask", binned=True)
def _logit_arithmetic(z_phi, z_theta, mu, alpha, lam):
    return functional.logit_arithmetic(z_phi, z_theta, mu, alpha=alpha, lam=lam)


@register_rule("adapted", "the adapted (warm-started) model alone", strength=False)
def _adapted(z_phi, z_theta, mu, alpha, lam):
    return z_phi.float()


@register_rule("base", "the pre-trained model alone", strength=False)
def _base(z_phi, z_theta, mu, alpha, lam):
    return z_theta.float()


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class StrengthBins:
    """Strengths that follow the adapted model's confidence: a row whose log max p_phi lies in
    [edges[i-1], edges[i]) gets ``mu[i]`` (one more strength than edges, edges increasing)."""

    edges: tuple[float, ...]
    mu: tuple[float, ...]

    OBSERVABLE = "log_max_p_adapted"  # the artifact's name of the binned quantity

    def __post_init__(self) -> None:
        edges, mus = tuple(self.edges), tuple(self.mu)
        if len(mus) != len(edges) + 1:
            raise SteeringError(
                "mu_bins", f"needs one more strength than edges, got {len(mus)} and {len(edges)}"
            )
        if not all(_real(e) and math.isfinite(e) for e in edges) or list(edges) != sorted(edges):
            raise SteeringError("mu_bins", f"edges must be finite numbers, increasing; got {list(edges)}")
        try:
            mus = tuple(functional.check_strength(m, "strength") for m in mus)
        except ValueError as err:
            raise SteeringError("mu_bins", str(err)) from None
        object.__setattr__(self, "edges", tuple(float(e) for e in edges))
        object.__setattr__(self, "mu", mus)

    def strength(self, z_phi: torch.Tensor) -> torch.Tensor:
        """Per-row strengths [..., 1]: the bin of each row's log max p_phi."""
        obs = torch.log_softmax(z_phi.float(), dim=-1).amax(-1)
        mus = torch.as_tensor(self.mu, dtype=torch.float32, device=obs.device)
        edges = torch.as_tensor(self.edges, dtype=torch.float32, device=obs.device)
        return mus[torch.bucketize(obs, edges, right=True)].unsqueeze(-1)

    def to_json(self) -> dict[str, Any]:
        return {"observable": self.OBSERVABLE, "edges": list(self.edges), "mu": list(self.mu)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StrengthBins:
        if not isinstance(data, Mapping) or set(data) != {"observable", "edges", "mu"}:
            raise SteeringError("mu_bins", f'must be {{"observable", "edges", "mu"}}, got {data!r}')
        if data["observable"] != cls.OBSERVABLE:
            raise SteeringError(
                "mu_bins", f"observable must be {cls.OBSERVABLE!r}, got {data['observable']!r}"
            )
        if not isinstance(data["edges"], Sequence) or not isinstance(data["mu"], Sequence):
            raise SteeringError("mu_bins", "edges and mu must be lists of numbers")
        return cls(tuple(data["edges"]), tuple(data["mu"]))


@dataclass(frozen=True)
class Steerer:
    """How the steered logits come from the adapted (z_phi) and base (z_theta) logits.

    ``method``: a :data:`RULES` name; ``mu``: the strength (ignored by "adapted"/"base");
    ``alpha``: the confidence-mask threshold (eq. 12); ``lam``: what masked tokens get
    (-inf, a finite logit, or None: they keep z_phi); ``mu_bins``: per-confidence-bin strengths
    (:class:`StrengthBins` or its JSON form) used instead of ``mu`` by the rules that take them.
    Every value is checked here; ``mu`` must lie within +-:data:`svdecode.steering.functional.MAX_STRENGTH`.

    >>> import torch
    >>> steer = Steerer("svdecode", mu=-2.0, alpha=0.1)
    >>> z_phi, z_theta = torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    >>> steer(z_phi, z_theta)  # the unlikely third token is masked out
    tensor([[2.4179, 0.6185,   -inf]])
    >>> steer.replace(mu=0.0)(z_phi, z_theta)  # another request's setting is another instance
    tensor([[2., 1., -inf]])
    >>> steer.to_json()
    {'method': 'svdecode', 'mu': -2.0, 'alpha': 0.1, 'lam': '-inf', 'mu_bins': None}
    >>> Steerer.from_json(steer.to_json()) == steer
    True
    >>> Steerer("svdecode", mu=1e39)
    Traceback (most recent call last):
    ...
    svdecode.steering.steerer.SteeringError: steering field 'mu': mu must be a finite number of magnitude at most 1e+30 (the largest strength whose fp32 steering step is representable), got 1e+39
    """

    method: str = "svdecode"
    mu: float = 0.0
    alpha: float = 0.1
    lam: float | None = NEG_INF
    mu_bins: StrengthBins | None = None

    def __post_init__(self) -> None:
        rule = RULES.get(self.method) if isinstance(self.method, str) else None
        if rule is None:
            raise SteeringError("method", f"must be one of {', '.join(RULES)}, got {self.method!r}")
        try:
            object.__setattr__(self, "mu", functional.check_strength(self.mu, "mu"))
        except ValueError as err:
            raise SteeringError("mu", str(err)) from None
        if not (_real(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise SteeringError("alpha", f"must be a number in [0, 1], got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.lam is not None:
            if not _real(self.lam) or math.isnan(self.lam) or self.lam == math.inf:
                raise SteeringError("lam", f"must be -inf, a finite number or None, got {self.lam!r}")
            object.__setattr__(self, "lam", float(self.lam))
        if self.mu_bins is not None:
            bins = self.mu_bins
            if not isinstance(bins, StrengthBins):
                bins = StrengthBins.from_json(bins)
            if not rule.binned:
                binned = ", ".join(n for n, r in RULES.items() if r.binned)
                raise SteeringError(
                    "mu_bins", f"method {self.method!r} takes no binned strengths (only {binned})"
                )
            object.__setattr__(self, "mu_bins", bins)

    @property
    def rule(self) -> CombineRule:
        return RULES[self.method]

    def __call__(self, z_phi: torch.Tensor, z_theta: torch.Tensor) -> torch.Tensor:
        """Steered fp32 logits from the adapted and base logits (same shape ``[..., V]``)."""
        return self._apply(z_phi, z_theta, self.mu)

    def _apply(self, z_phi: torch.Tensor, z_theta: torch.Tensor, mu: float | torch.Tensor) -> torch.Tensor:
        if self.mu_bins is not None:
            mu = self.mu_bins.strength(z_phi)
        return self.rule.fn(z_phi, z_theta, mu, self.alpha, self.lam)

    def replace(self, **changes: Any) -> Steerer:
        """A new, validated steerer with ``changes`` (e.g. ``mu=``); this one is unchanged."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The decoding fields of ``steering_config.json`` (lam -inf as "-inf": JSON has no infinity)."""
        lam = None if self.lam is None else ("-inf" if self.lam == NEG_INF else self.lam)
        bins = None if self.mu_bins is None else self.mu_bins.to_json()
        return {"method": self.method, "mu": self.mu, "alpha": self.alpha, "lam": lam, "mu_bins": bins}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Steerer:
        """The steerer of a ``steering_config.json`` document's decoding fields (others ignored:
        :meth:`svdecode.model.config.SteeringConfig.load` reads and checks a whole file)."""
        missing = [k for k in ("method", "mu", "alpha", "lam") if k not in data]
        if missing:
            raise SteeringError(missing[0], "is missing")
        lam = data["lam"]
        if isinstance(lam, str) and lam.strip().lower() == "-inf":
            lam = NEG_INF
        return cls(data["method"], data["mu"], data["alpha"], lam, data.get("mu_bins"))


@dataclass(frozen=True)
class BatchSteerer:
    """One :class:`Steerer` per row of a batch, called like a steerer on the batch's logits.

    Rows that differ only in ``mu`` go through their rule together with a per-row strength
    tensor, so each row gets what its own steerer gives (to fp32 rounding of the batched kernel).
    """

    rows: tuple[Steerer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))

    def __call__(self, z_phi: torch.Tensor, z_theta: torch.Tensor) -> torch.Tensor:
        rows = self.rows
        if len(rows) != z_phi.shape[0]:
            raise ValueError(f"{len(rows)} row settings for a batch of {z_phi.shape[0]} rows")
        if len(set(rows)) == 1:
            return rows[0](z_phi, z_theta)
        groups: dict[Steerer, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.replace(mu=0.0), []).append(i)
        out = torch.empty(z_phi.shape, dtype=torch.float32, device=z_phi.device)
        for group, idx in groups.items():
            sel = torch.tensor(idx, device=z_phi.device)
            mu = torch.tensor([rows[i].mu for i in idx], dtype=torch.float32, device=z_phi.device)
            mu = mu.view(-1, *([1] * (z_phi.dim() - 1)))  # broadcast over positions and vocabulary
            out[sel] = group._apply(z_phi[sel], z_theta[sel], mu)
        return out
