"""The steering settings and their JSON artifact (``steering_config.json`` beside the adapter).

The file has a schema, :data:`SCHEMA`: one line per field (type, range, since which format
version, and how older files get it), checked by one function, :func:`check_fields`. Every field
is required, typed (no booleans for numbers, no strings for floats), ranged, and unknown fields
are refused; each error names the file and the field. Files of an older ``format_version`` load
through explicit migrations of the fields they predate; ``mu`` never has a default.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from svdecode.calibration.objectives import OBJECTIVES
from svdecode.checks import UNIT_INTERVAL, Rule
from svdecode.errors import SvdecodeError
from svdecode.fileio import write_json_atomic
from svdecode.steering import RULES, Steerer, SteeringError

CONFIG_NAME = "steering_config.json"
# 2: the schema below; lam is a number, "-inf" or null (1 wrote finite values as strings too).
# 3: "objective" (was "estimator": every objective of svdecode.calibration.objectives) and "mu_bins".
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)

# How the two distributions are combined: the registered combine rules (svdecode.steering.RULES;
# the first is the method, the rest the comparisons and ablations the evaluation needs).
METHODS = tuple(RULES)


class ConfigError(SvdecodeError, ValueError):
    """A steering configuration file is missing, corrupt or incompatible."""


_REQUIRED = object()  # a field's ``migrate`` when older files must have it too


@dataclass(frozen=True)
class FieldSpec:
    """One field of ``steering_config.json``.

    ``kind``: "number" (int or float, finite, within ``rule``), "lam" (a finite number, -inf, or
    null), "str", "object" (a JSON object). ``since``: the format_version that introduced it;
    ``migrate``: its value in files older than that.
    """

    kind: str
    description: str
    rule: Rule | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    since: int = 1
    migrate: Any = _REQUIRED
    check: Callable[[Any], str | None] | None = None  # a structural check of an "object" field


# A new field is one line here. Files written before it lack it: bump FORMAT_VERSION (and add it to
# SUPPORTED_VERSIONS), give the field since=<the new version> and migrate=<its value in older files>
# (a callable for a fresh dict/list); a field without a safe value for old files keeps migrate unset.
SCHEMA: dict[str, FieldSpec] = {
    "mu": FieldSpec("number", "the steering strength mu_bar (eq. 14)"),
    "alpha": FieldSpec("number", "the confidence-mask threshold (eq. 12)", rule=UNIT_INTERVAL),
    "lam": FieldSpec("lam", "the value of masked tokens: -inf, a finite number, or null", nullable=True),
    "method": FieldSpec("str", "how the two distributions are combined", choices=METHODS),
    "objective": FieldSpec("str", "the calibration objective that chose mu", choices=OBJECTIVES),
    "mu_bins": FieldSpec(
        "object",
        "strengths per bin of the adapted model's confidence, applied instead of mu (or null)",
        nullable=True,
        since=3,
        migrate=None,
        check=lambda v: _mu_bins_problem(v),
    ),
    "calibration": FieldSpec("object", "the calibration statistics ({} when mu was set by hand)"),
    "base_model": FieldSpec("str", "the base model's hub id or path", nullable=True),
    "adapted_model": FieldSpec(
        "str", "a fully fine-tuned checkpoint, when there is no adapter", nullable=True
    ),
    "adapter_type": FieldSpec("str", "the peft method (LORA, IA3, ...) or FULL", nullable=True),
    "library_version": FieldSpec("str", "the svdecode version that wrote the file"),
}


def _lam_problem(value: Any, from_file: bool, version: int) -> tuple[str | None, Any]:
    """(problem, value as a float or None) of a ``lam``; JSON has no infinity, so files say "-inf"."""
    if isinstance(value, str) and from_file:
        if value.strip().lower() == "-inf":
            return None, float("-inf")
        if version == 1:  # format 1 wrote every lam with repr(), e.g. "-5.0"
            try:
                return _lam_problem(float(value), False, version)
            except ValueError:
                pass
        return 'must be a number, "-inf" or null', value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "must be a number, -inf or null", value
    if math.isnan(value) or value == math.inf:
        return "must be finite or -inf (NaN and +inf would make every masked token win)", value
    return None, float(value)


def _problem(spec: FieldSpec, value: Any, from_file: bool, version: int) -> tuple[str | None, Any]:
    """What is wrong with ``value`` for ``spec`` (None when nothing), and the value to keep."""
    if value is None:
        return (None, None) if spec.nullable else ("must not be null", value)
    if spec.kind == "lam":
        return _lam_problem(value, from_file, version)
    if spec.kind == "number":
        rule = spec.rule or Rule("float")
        if rule.accepts(value):
            return None, float(value)
        typed = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return f"must be {rule.describe()}, got {'' if typed else type(value).__name__ + ' '}{value!r}", value
    if spec.kind == "str":
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__} {value!r}", value
        if spec.choices and value not in spec.choices:
            return f"must be one of {', '.join(spec.choices)}, got {value!r}", value
        return None, value
    if not isinstance(value, dict):
        return f"must be a JSON object, got {type(value).__name__}", value
    return (spec.check(value) if spec.check else None), value


def _mu_bins_problem(value: dict[str, Any]) -> str | None:
    edges, mus = value.get("edges"), value.get("mu")
    if set(value) != {"observable", "edges", "mu"} or value["observable"] != "log_max_p_adapted":
        return 'must be {"observable": "log_max_p_adapted", "edges": [...], "mu": [...]}'
    if not isinstance(edges, list) or not isinstance(mus, list) or len(mus) != len(edges) + 1:
        return "needs one more strength ('mu') than bin edges ('edges')"
    finite = all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in edges + mus
    )
    if not finite or edges != sorted(edges):
        return "edges and strengths must be finite numbers, the edges increasing"
    return None


def check_fields(
    data: Mapping[str, Any], source: str, *, version: int = FORMAT_VERSION, from_file: bool = True
) -> dict[str, Any]:
    """Check ``data`` against :data:`SCHEMA` and return the field values (lam as a float); fields
    an older ``version`` predates get their ``migrate`` value. Raises :class:`ConfigError` naming
    ``source`` and the field."""
    unknown = sorted(set(data) - set(SCHEMA) - {"format_version"})
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(SCHEMA)}")
    values: dict[str, Any] = {}
    for name, spec in SCHEMA.items():
        if name not in data:
            if version < spec.since and spec.migrate is not _REQUIRED:
                values[name] = spec.migrate() if callable(spec.migrate) else spec.migrate
                continue
            raise ConfigError(f"{source}: field {name!r} is missing; it is required: {spec.description}")
        problem, values[name] = _problem(spec, data[name], from_file, version)
        if problem:
            raise ConfigError(f"{source}: field {name!r} {problem}; {name} is {spec.description}")
    return values


def _steerer(method: str, mu: float, alpha: float, lam: float | None, mu_bins: Any) -> Steerer:
    """Binned strengths go only to the rules that take them; the others use ``mu`` (a recorded
    calibration keeps its bins when ``override(method=...)`` picks such a rule)."""
    takes_bins = RULES[method].binned if method in RULES else True
    return Steerer(method, mu, alpha, lam, mu_bins if takes_bins else None)


def _check_steerer(values: Mapping[str, Any], source: str) -> None:
    try:
        _steerer(*(values[k] for k in ("method", "mu", "alpha", "lam", "mu_bins")))
    except SteeringError as err:
        raise ConfigError(f"{source}: {err}") from None


@dataclass
class SteeringConfig:
    """Everything needed to reproduce steered decoding besides the weights: the decoding fields
    (``method``, ``mu``, ``alpha``, ``lam``, ``mu_bins``), from which :attr:`steerer` builds the
    :class:`~svdecode.steering.Steerer` that decodes, and the calibration record.

    ``lam``: value for tokens outside the confidence mask: ``-inf`` (paper), a finite float, or
    ``None`` for the scoring mode (masked tokens keep their adapted logit).
    """

    mu: float = 0.0
    alpha: float = 0.1
    lam: float | None = float("-inf")
    method: str = "svdecode"
    objective: str = "nll"  # what chose mu (calibration.objectives.OBJECTIVES; "estimator" before format 3)
    # strengths that follow the adapted model's confidence, when calibration kept them
    mu_bins: dict[str, Any] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    adapted_model: str | None = None  # a fully fine-tuned checkpoint, when there is no adapter
    adapter_type: str | None = None
    library_version: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field against :data:`SCHEMA` and the decoding fields as a steerer (raises
        :class:`ConfigError`)."""
        values = {name: getattr(self, name) for name in SCHEMA}
        _check_steerer(check_fields(values, "steering settings", from_file=False), "steering settings")

    @property
    def steerer(self) -> Steerer:
        """The :class:`~svdecode.steering.Steerer` of the current decoding fields, built on each
        access so that ``config.mu = ...`` takes effect."""
        return _steerer(self.method, self.mu, self.alpha, self.lam, self.mu_bins)

    def override(self, **values: Any) -> None:
        """Set the given fields (``None`` leaves a field as it is) and validate. A new ``mu`` or
        ``alpha`` drops calibrated per-bin strengths: they were fitted for the stored ones, and
        applying them would silently ignore the strength asked for."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = set(given) - set(SCHEMA)
        if unknown:
            raise ConfigError(f"steering settings: unknown field(s) {sorted(unknown)}")
        for key, value in given.items():
            setattr(self, key, value)
        if "mu" in given or "alpha" in given:
            self.mu_bins = None
        self.validate()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no infinity: -inf is stored as "-inf" so the file stays standard JSON.
        data["lam"] = None if self.lam is None else ("-inf" if self.lam == -math.inf else float(self.lam))
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<dict>") -> SteeringConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            raise ConfigError(
                f"{source}: format_version {version!r} is not supported by this svdecode (reads "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); was it written by a newer svdecode?"
            )
        if version < 3 and "estimator" in data:  # renamed in format 3, same values
            data = {("objective" if k == "estimator" else k): v for k, v in data.items()}
        values = check_fields(data, source, version=version)
        _check_steerer(values, source)
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        """Write ``steering_config.json`` atomically (temp file + rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(directory / CONFIG_NAME, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> SteeringConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path} not found: {directory} is not a saved SteeredModel directory")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is corrupt (not valid JSON): {err}") from err
        return cls.from_json(data, source=str(path))
