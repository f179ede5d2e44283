"""How the strength is calibrated, as one object: :class:`CalibrationConfig` travels from the
command line through ``svdecode run``/``calibrate``/``eval`` and :meth:`SteeredModel.calibrate`
to the record a run writes (:func:`calibration_request`, the one format of the calibration stage),
as ``transformers.GenerationConfig`` does for ``generate``.

Layer: core.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from svdecode.calibration.objectives import (
    BINNED,
    CHOOSABLE,
    DEFAULT_BINS,
    DEFAULT_FOLDS,
    DEFAULT_OBJECTIVE,
    DEFAULT_TRIM,
    MAX_BINS,
    ChoiceItem,
    ItemMetric,
)
from svdecode.calibration.strength import DEFAULT_CAP
from svdecode.checks import POSITIVE_INT, SEED, UNIT_INTERVAL, Rule, check
from svdecode.errors import InputError
from svdecode.fileio import short_hash

DEFAULT_ALPHA = 0.1  # the confidence mask calibrated with when none is given (SteeringConfig's)


@dataclass(frozen=True)
class CalibrationConfig:
    """How the strength is calibrated -- one object from the command line through ``svdecode
    run``/``calibrate``/``eval`` and :meth:`SteeredModel.calibrate` to the record, as
    ``transformers.GenerationConfig`` is for ``generate``.

    ``objective``: "auto" (choose among the candidates, :mod:`svdecode.calibration.selection`) or
    one forced (:data:`~svdecode.calibration.objectives.CHOOSABLE`); ``guard`` with ``folds``-fold
    (nested) cross-validation turns steering off without a held-out gain; ``bins``
    confidence bins (0/1: off); ``seed`` draws the folds; ``trim`` is the trimmed mean's fraction;
    ``alpha`` the confidence mask calibrated with (None: the model's own). The rest say how the
    pass runs and never change its result beyond float rounding (``cap``: kept tokens per row).

    >>> CalibrationConfig().replace(objective="mean", folds=3).folds
    3
    """

    objective: str = DEFAULT_OBJECTIVE
    guard: bool = True
    folds: int = DEFAULT_FOLDS
    bins: int = DEFAULT_BINS
    seed: int = 0
    trim: float = DEFAULT_TRIM
    alpha: float | None = None
    batch_size: int = 8
    max_length: int | None = None
    cap: int = DEFAULT_CAP
    progress: bool = True

    def validate(self) -> CalibrationConfig:
        """Every field in range (:class:`InputError` naming it); returns self."""
        if self.objective not in CHOOSABLE:
            raise InputError(f"unknown objective {self.objective!r}; choose one of {', '.join(CHOOSABLE)}")
        check("folds", self.folds, Rule("int", lo=2))
        check("bins", self.bins, Rule("int", lo=0, hi=MAX_BINS))  # more is a typo (and minutes of fits)
        if self.objective == BINNED and self.bins < 2:
            raise InputError(
                f"objective 'binned' needs at least 2 confidence bins (--confidence-bins; {self.bins} given)"
            )
        check("seed", self.seed, SEED)
        check("trim", self.trim, Rule("float", lo=0, hi=0.5, hi_open=True))
        check("alpha", self.alpha, UNIT_INTERVAL, optional=True)
        check("batch_size", self.batch_size, POSITIVE_INT)
        check("max_length", self.max_length, POSITIVE_INT, optional=True)
        check("cap", self.cap, POSITIVE_INT)
        return self

    def replace(self, **changes: Any) -> CalibrationConfig:
        """A copy with ``changes``; ``estimator`` is the old name of ``objective``. An unknown
        name is a :class:`TypeError` naming it."""
        if "estimator" in changes:
            estimator = changes.pop("estimator")
            if estimator is not None:
                changes["objective"] = estimator
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown calibration option(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(cls, config: CalibrationConfig | None, overrides: Mapping[str, Any]) -> CalibrationConfig:
        """``config`` (default: the defaults) with keyword ``overrides``, as ``generate(...,
        generation_config=None, **kwargs)`` does."""
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"calibration options must be a {cls.__name__}, got {type(config).__name__}")
        return (config or cls()).replace(**overrides)

    def record(self) -> dict[str, Any]:
        """The settings a run records (and compares for reuse): objective, guard, folds, bins, seed.
        A field added later should join it only when it differs from its default, so that runs
        recorded before the field existed stay reusable."""
        return {k: getattr(self, k) for k in ("objective", "guard", "folds", "bins", "seed")}

    def cache_key(self) -> dict[str, Any]:
        """What decides a calibration's outcome, for cache identities (the field names and values
        the evaluation's calibration cache has always hashed)."""
        keep = ("objective", "trim", "guard", "folds", "bins", "seed", "max_length")
        return {k: getattr(self, k) for k in keep} | {"batch_size": None, "progress": None}


FIELDS = tuple(f.name for f in dataclasses.fields(CalibrationConfig))


def split_options(overrides: Mapping[str, Any], *configs: Any) -> list[Any]:
    """Keyword ``overrides`` applied to every options dataclass in ``configs`` that has the field
    (``estimator`` counts as ``objective``); a keyword none of them has is a :class:`TypeError`
    naming it. Returns the updated configs, in order."""

    def names(c: Any) -> set[str]:
        own = {f.name for f in dataclasses.fields(c)}
        return own | {"estimator"} if isinstance(c, CalibrationConfig) else own

    unknown = sorted(set(overrides) - set().union(*map(names, configs)))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
    out = []
    for c in configs:
        mine = {k: v for k, v in overrides.items() if k in names(c)}
        out.append(c.replace(**mine) if isinstance(c, CalibrationConfig) else dataclasses.replace(c, **mine))
    return out


def pairs_hash(prompts: Sequence[str], answers: Sequence[str]) -> str:
    """16 hex digits of the SHA-256 of the (prompt, answer) texts."""
    h = hashlib.sha256()
    for p, a in zip(prompts, answers, strict=True):
        h.update(p.encode())
        h.update(b"\x00")
        h.update(a.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def data_hash(prompts: Sequence[str], answers: Sequence[str], choices: Sequence[ChoiceItem] | None) -> str:
    """The calibration data's identity: its pairs' texts, and its choice items' options and labels."""
    out = pairs_hash(prompts, answers)
    if choices:
        opts = [(c.prompt + "\x02" + "\x03".join(c.options), str(c.labels)) for c in choices]
        out += "+" + pairs_hash(*zip(*opts, strict=True))
    return out


def calibration_request(
    config: CalibrationConfig,
    data: Mapping[str, Any],
    adapter_sha256: str | None,
    choices: Sequence[ChoiceItem] | None = None,
    choice_metric: ItemMetric | None = None,
    **context: Any,
) -> dict[str, Any]:
    """The calibration stage's record in a run manifest -- the one format ``svdecode run`` and
    ``svdecode calibrate`` write: the settings, which choice items (by id) and metric the task
    objective and the guard judge on, the data, the adapter (by content) and the caller's
    ``context`` (``run``: alpha and method; ``calibrate``: base and steering overrides)."""
    return {
        **config.record(),
        "choices": None
        if not choices
        else {"n": len(choices), "ids_sha256": short_hash([c.id for c in choices])},
        "choice_metric": getattr(choice_metric, "__name__", None) if choices else None,
        **context,
        "data": dict(data),
        "adapter_sha256": adapter_sha256,
    }
