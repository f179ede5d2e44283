"""The methods an evaluation compares, as :class:`MethodSpec` rows: base, PEFT alone, PEFT+SVDecode
with a calibrated strength, logit arithmetic, and the ablations (no projection, no mask, alpha
sweep, lam variants, estimators, decoding strategies); :func:`build_methods` turns names into specs.

Imports the library core (calibration, config, scoring); nothing here runs a task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.calibration.config import CalibrationConfig
from svdecode.calibration.objectives import (
    OBJECTIVES,
    ChoiceItem,
    ItemMetric,
    choice_accuracy,
)
from svdecode.eval.strengths import Calibrator
from svdecode.fileio import jsonable
from svdecode.steering import Steerer

log = logging.getLogger("svdecode")


NEG_INF = float("-inf")


STANDARD_METHODS: tuple[str, ...] = ("base", "peft", "peft+svdecode", "peft+logit_arith")


ALPHA_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


ESTIMATOR_NAMES: tuple[str, ...] = ("mean", "median", "trimmed", "pooled")


LAM_VARIANTS: tuple[str, ...] = ("-inf", "-10", "keep")


DECODINGS: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "beam4": {"do_sample": False, "num_beams": 4},
    "top_p0.9": {"do_sample": True, "top_p": 0.9, "top_k": 0, "temperature": 1.0},
    "top_k50": {"do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 1.0},
}


GREEDY = DECODINGS["greedy"]


NOT_IMPLEMENTED: dict[str, str] = {
    "TaD": (
        "TaD (Xu et al., 'TaD: A Plug-and-Play Task-Aware Decoding Method to Better Adapt LLMs on "
        "Downstream Tasks', IJCAI 2024) was not implemented: the sources reachable offline (abstracts "
        "and summaries) say only that it aligns the output distribution along the difference between "
        "the post- and pre-fine-tuning probability distributions ('knowledge vector'); its exact update "
        "rule, normalisation and hyper-parameters could not be verified, and a guessed formula would "
        "not be TaD. 'peft+logit_arith' (z_phi + beta (log p_phi - log p_theta), same mask, beta "
        "calibrated like mu) is the closest implemented relative."
    )
}


# Ablation group names that expand to several method names.
GROUPS: dict[str, tuple[str, ...]] = {
    "alpha_sweep": tuple(f"alpha={a}" for a in ALPHA_SWEEP),
    "estimators": tuple(f"estimator={e}" for e in ESTIMATOR_NAMES),
    "objectives": tuple(f"objective={o}" for o in OBJECTIVES),
    "lam_variants": tuple(f"lam={v}" for v in LAM_VARIANTS),
    "decodings": tuple(f"decoding={d}" for d in DECODINGS),
}


GROUPS["ablations"] = (
    "no_projection",
    "no_mask",
    *GROUPS["alpha_sweep"],
    *GROUPS["lam_variants"],
    *GROUPS["estimators"],
)


def lam_json(lam: float | None) -> float | str:
    """lam for JSON: "keep" (None, scoring mode), "-inf", or a finite float."""
    if lam is None:
        return "keep"
    return "-inf" if math.isinf(lam) else float(lam)


def lam_parse(value: Any) -> float | None:
    if value is None or value == "keep" or value == "none":
        return None
    return float(value)


def as_float(value: Any) -> float:
    """Inverse of :func:`jsonable` for one number ("-inf" -> -inf)."""
    return float(value)


@dataclass
class MethodSpec:
    """One row of the comparison: how the two streams are combined and how to decode.

    ``method`` is a :data:`svdecode.model.config.METHODS` entry ("svdecode", "prob_space",
    "logit_arithmetic", "adapted" = the PEFT model alone, "base" = the pre-trained model).
    ``lam`` is used for generation, ``score_lam`` for teacher-forced scoring (``None``: kept tokens
    steered, the others keep z_phi). ``reference`` names an extra method to compare with (e.g.
    "peft[beam4]" for "peft+svdecode[beam4]"), besides the run's global reference.
    """

    name: str
    method: str
    mu: float = 0.0
    alpha: float = 0.1
    lam: float | None = NEG_INF
    decoding: dict[str, Any] = field(default_factory=dict)
    score_lam: float | None = None
    estimator: str | None = None  # the objective that chose mu (name kept for results.json)
    calibration: dict[str, Any] = field(default_factory=dict)
    mu_bins: dict[str, Any] | None = None
    reference: str | None = None
    description: str = ""

    @property
    def steered(self) -> bool:
        return self.method not in ("base", "adapted")

    @property
    def is_greedy_at_zero(self) -> bool:
        return (
            self.method in ("svdecode", "logit_arithmetic", "prob_space")
            and float(self.mu) == 0.0
            and not self.mu_bins
            and (self.lam is None or self.lam == NEG_INF)
            and self.decoding_name == "greedy"
        )

    @property
    def decoding_name(self) -> str:
        for name, cfg in DECODINGS.items():
            if {k: v for k, v in self.decoding.items() if k != "seed"} == cfg:
                return name
        return "greedy" if not self.decoding else "custom"

    def steerer(self, scoring: bool = False) -> Steerer:
        """The :class:`~svdecode.steering.Steerer` of this method, for generation or (``scoring``)
        teacher-forced scoring, which uses ``score_lam``."""
        return Steerer(
            self.method, self.mu, self.alpha, self.score_lam if scoring else self.lam, self.mu_bins
        )

    def key(self, scoring: bool) -> dict[str, Any]:
        """What determines this method's outputs (decoding is irrelevant for scoring).

        Greedy generation at mu = 0 (e.g. the guard turned steering off) is the adapted model's: the
        argmax is always inside the confidence mask, and masked tokens only lose (lam -inf or
        unchanged). Its key is the adapted model's, so the evaluation generates it once."""
        if not scoring and self.is_greedy_at_zero:
            return {"method": "adapted", "decoding": GREEDY}
        out = {"method": self.method}
        if self.steered:
            out.update(mu=repr(float(self.mu)), alpha=float(self.alpha))
            out["lam"] = lam_json(self.score_lam if scoring else self.lam)
            if self.mu_bins:
                out["mu_bins"] = self.mu_bins
        if not scoring:
            out["decoding"] = self.decoding or GREEDY
        return out

    def to_json(self) -> dict[str, Any]:
        return jsonable(
            {
                "name": self.name,
                "method": self.method,
                "mu": float(self.mu),
                "alpha": float(self.alpha),
                "lam": lam_json(self.lam),
                "score_lam": lam_json(self.score_lam),
                "decoding": self.decoding,
                "decoding_name": self.decoding_name,
                "estimator": self.estimator,
                "mu_bins": self.mu_bins,
                "calibration": self.calibration,
                "reference": self.reference,
                "description": self.description,
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MethodSpec:
        return cls(
            name=data["name"],
            method=data["method"],
            mu=float(data.get("mu", 0.0)),
            alpha=float(data.get("alpha", 0.1)),
            lam=lam_parse(data.get("lam", "-inf")),
            decoding=dict(data.get("decoding") or {}),
            score_lam=lam_parse(data.get("score_lam")),
            estimator=data.get("estimator"),
            calibration=dict(data.get("calibration") or {}),
            mu_bins=data.get("mu_bins"),
            reference=data.get("reference"),
            description=data.get("description", ""),
        )


@dataclass
class MethodSet:
    """The specs to evaluate plus the per-token mu*_t of each calibration (for histograms),
    keyed by the calibration key stored in ``spec.calibration["key"]``."""

    specs: list[MethodSpec]
    token_mu: dict[str, np.ndarray] = field(default_factory=dict)

    def __iter__(self) -> Iterator[MethodSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def get(self, name: str) -> MethodSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(f"no method {name!r}; have {self.names}")


def expand_method_names(names: Sequence[str]) -> list[str]:
    """Expand group names ("alpha_sweep", "estimators", "lam_variants", "decodings", "ablations")
    and drop duplicates, keeping order."""
    out: list[str] = []
    for name in names:
        out.extend(GROUPS.get(name, (name,)))
    return list(dict.fromkeys(out))


def known_method_names() -> list[str]:
    return [
        *STANDARD_METHODS,
        "no_projection",
        "no_mask",
        *GROUPS["alpha_sweep"],
        *GROUPS["lam_variants"],
        *GROUPS["estimators"],
        *GROUPS["objectives"],
        *GROUPS["decodings"],
        *GROUPS,
        "alpha=<a>",
        "lam=<float|-inf|keep>",
    ]


def build_methods(
    model,
    calib: Sequence[Any] | None,
    names: Sequence[str] = STANDARD_METHODS,
    calibration: CalibrationConfig | None = None,
    *,
    choices: Sequence[ChoiceItem] | None = None,
    choice_metric: ItemMetric = choice_accuracy,
    lam: float | None = NEG_INF,
    score_lam: float | None = None,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> MethodSet:
    """The comparison set for ``model`` (a :class:`~svdecode.model.steered_model.SteeredModel`).

    Names: "base", "peft", "peft+svdecode" (mu_bar calibrated on ``calib``), "peft+logit_arith"
    (beta calibrated the same way with the logit-difference direction), "no_projection"
    (prob_space, eq. 9, own strength), "no_mask" (alpha = 0, recalibrated), "alpha=<a>"
    (recalibrated per alpha), "lam=<-inf|float|keep>" (svdecode mu with that lam for generation
    AND scoring), "objective=<nll|task|mean|median|trimmed|pooled>" (that objective's own fit from
    the same calibration, unguarded; "estimator=<...>" is the old name), "decoding=<greedy|beam4|top_p0.9|top_k50>" (adds "peft[d]" and
    "peft+svdecode[d]"), and the groups of :data:`GROUPS`. "tad" is refused (see
    :data:`NOT_IMPLEMENTED`). Calibrated specs apply the calibration's decision for ``objective``
    (guarded by cross-validation, with confidence-binned strengths when kept; see
    :func:`svdecode.calibration.objectives.choose_strength`); ``choices`` are the calibration questions' choice
    items (task objective and guard). ``calib=None`` uses the model's stored svdecode mu for
    "peft+svdecode" and fails for anything else that needs calibrating. ``calibration``: how
    (:class:`~svdecode.calibration.config.CalibrationConfig`; its ``alpha``, None: the model's, is the
    mask of the main methods; its ``seed`` also seeds sampled decodings); keyword arguments
    override its fields.
    """
    settings = CalibrationConfig.resolve(calibration, kwargs).validate()
    alpha = float(model.steering.alpha if settings.alpha is None else settings.alpha)
    seed = settings.seed
    cal = Calibrator(model, calib, settings, cache_dir, choices, choice_metric)
    specs: list[MethodSpec] = []
    token_mu: dict[str, np.ndarray] = {}

    def calibrated(name, method, a, est=None, **kw) -> MethodSpec:
        """A calibrated spec: the calibration's decision (guard, binned strengths) when ``est`` is
        None, else objective ``est``'s own fit as it is."""
        stats, tmu = cal(method, a)
        token_mu[stats.get("key", cal.key(method, a))] = tmu
        estimates = stats.get("estimates", {})
        if est is not None and est not in estimates:
            raise ValueError(
                f"calibration {cal.key(method, a)} has no {est!r} estimate"
                + (
                    " (the task objective needs calibration examples with a multiple-choice view)"
                    if est == "task"
                    else ""
                )
            )
        bins = stats.get("bins") or {}
        mu_bins = (
            {k: bins[k] for k in ("observable", "edges", "mu")}
            if est is None and bins.get("applied")
            else None
        )
        return MethodSpec(
            name,
            method,
            mu=float(stats["mu"] if est is None else estimates[est]),
            alpha=a,
            lam=kw.pop("lam", lam),
            score_lam=kw.pop("score_lam", score_lam),
            estimator=est or stats.get("objective"),
            calibration={**stats, "key": stats.get("key", cal.key(method, a))},
            mu_bins=mu_bins,
            **kw,
        )

    for name in expand_method_names(names):
        specs.extend(_specs_for(name, calibrated, alpha, seed))
    seen: set[str] = set()
    unique = []
    for spec in specs:
        if spec.name not in seen:
            seen.add(spec.name)
            unique.append(spec)
    return MethodSet(unique, token_mu)


def _specs_for(name: str, calibrated: Callable[..., MethodSpec], alpha: float, seed: int) -> list[MethodSpec]:
    """The spec(s) one method name stands for (a decoding name gives a PEFT and an SVDecode row)."""
    out: list[MethodSpec] = []
    if name == "base":
        out.append(MethodSpec("base", "base", description="pre-trained model (adapter off)"))
    elif name == "peft":
        out.append(MethodSpec("peft", "adapted", description="warm-started PEFT model alone"))
    elif name == "peft+svdecode":
        out.append(
            calibrated(name, "svdecode", alpha, description="SVDecode, calibrated and guarded strength")
        )
    elif name == "peft+logit_arith":
        out.append(
            calibrated(
                name,
                "logit_arithmetic",
                alpha,
                description="z_phi + beta (log p_phi - log p_theta), same mask, calibrated beta",
            )
        )
    elif name == "no_projection":
        out.append(
            calibrated(name, "prob_space", alpha, description="ablation: step in probability space (eq. 9)")
        )
    elif name == "no_mask":
        out.append(calibrated(name, "svdecode", 0.0, description="ablation: no confidence mask (alpha=0)"))
    elif name.startswith("alpha="):
        a = float(name.split("=", 1)[1])
        out.append(calibrated(name, "svdecode", a, description=f"alpha sweep: alpha={a:g}, recalibrated"))
    elif name.startswith("lam="):
        value = lam_parse(name.split("=", 1)[1])
        out.append(
            calibrated(
                name,
                "svdecode",
                alpha,
                lam=value,
                score_lam=value,
                description=f"lam ablation: masked tokens get {lam_json(value)} (generation and scoring)",
            )
        )
    elif name.startswith(("estimator=", "objective=")):
        est = name.split("=", 1)[1]
        known = ESTIMATOR_NAMES if name.startswith("estimator=") else OBJECTIVES
        if est not in known:
            raise ValueError(f"unknown objective in {name!r}; choose one of {known}")
        out.append(
            calibrated(
                name, "svdecode", alpha, est=est, description=f"strength from objective {est}, unguarded"
            )
        )
    elif name.startswith("decoding="):
        dname = name.split("=", 1)[1]
        if dname not in DECODINGS:
            raise ValueError(f"unknown decoding in {name!r}; choose one of {list(DECODINGS)}")
        dec = dict(DECODINGS[dname])
        if dec.get("do_sample"):
            dec["seed"] = seed
        out.append(
            MethodSpec(f"peft[{dname}]", "adapted", decoding=dec, description=f"PEFT alone, {dname} decoding")
        )
        out.append(
            calibrated(
                f"peft+svdecode[{dname}]",
                "svdecode",
                alpha,
                decoding=dict(dec),
                reference=f"peft[{dname}]",
                description=f"SVDecode, {dname} decoding",
            )
        )
    elif name.lower() == "tad":
        raise ValueError(NOT_IMPLEMENTED["TaD"])
    else:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(known_method_names())}")
    return out
