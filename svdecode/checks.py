"""Argument checks shared by the Python API and the command line: numbers against their ranges,
generation parameters as transformers defines them, paths, and prompts against the model's context.

Each check raises :class:`~svdecode.errors.InputError` naming the argument (or its flag), the value
and the allowed range, before any model work starts.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdecode.errors import InputError


@dataclass(frozen=True)
class Rule:
    """A number's type and range: ``kind`` is "int", "float" or "bool"; bounds are inclusive
    unless ``lo_open`` / ``hi_open``; floats must be finite unless ``allow_inf``."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allow_inf: bool = False

    def describe(self) -> str:
        what = {"int": "an integer", "float": "a number", "bool": "true or false"}[self.kind]
        if self.lo is not None and self.hi is not None:
            lb, rb = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{what} in {lb}{self.lo:g}, {self.hi:g}{rb}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        return what if self.kind != "float" or self.allow_inf else "a finite number"

    def accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        # numbers.Real / Integral: numpy and Python numbers alike, never booleans
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return False
        if math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or not (value > self.hi or (self.hi_open and value == self.hi))


POSITIVE_INT = Rule("int", lo=1)
NONNEGATIVE_INT = Rule("int", lo=0)
SEED = Rule("int", lo=0, hi=2**32 - 1)  # numpy's seeds; torch and random take these too
POSITIVE_FLOAT = Rule("float", lo=0, lo_open=True)
UNIT_INTERVAL = Rule("float", lo=0, hi=1)
FINITE_FLOAT = Rule("float")


# The largest |strength| the fp32 steering step represents. Every rule multiplies the strength by a
# direction bounded by the logits' spread S (the larger max - min of the two rows) and log V:
# |r_y| <= S + log V, KL <= max |r|, so |delta_y| = p_y |r_y - KL| <= 2 (S + log V), and the
# logit-arithmetic (r) and probability-space (r + 1) directions are smaller still. With
# |mu| <= 1e30, mu * direction stays below fp32's largest value (3.4e38) for any S < 1.7e8:
# language-model logits lie within about +-1e3 (half-precision ones within +-65504), so no real
# row overflows, and every strength a calibration can fit (it searches |mu| <= 1e4) is allowed.
MAX_STRENGTH = 1e30


def strength_problem(value: Any, name: str = "mu") -> str | None:
    """Why ``value`` cannot be a steering strength (None when it can): a real number (no bool) of
    magnitude at most :data:`MAX_STRENGTH`, what the fp32 steering step can represent (1e39 and
    1e300 are finite, but not there)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not abs(value) <= MAX_STRENGTH:
        return (
            f"{name} must be a finite number of magnitude at most {MAX_STRENGTH:g} (the largest strength "
            f"whose fp32 steering step is representable), got {value!r}"
        )
    return None


def check_strength(value: Any, name: str = "mu") -> float:
    """``value`` as a float if it is a strength the fp32 steering math can apply, else
    :class:`InputError` naming ``name`` (the flag, field or argument)."""
    problem = strength_problem(value, name)
    if problem:
        raise InputError(problem)
    return float(value)


def check(name: str, value: Any, rule: Rule, *, optional: bool = False) -> Any:
    """Return ``value`` if ``rule`` accepts it (or it is None and ``optional``), else raise."""
    if value is None and optional:
        return None
    if not rule.accepts(value):
        raise InputError(f"{name} must be {rule.describe()}, got {value!r}")
    return value


def parse(text: str, rule: Rule) -> int | float:
    """A command-line string as ``rule``'s number (``ValueError`` naming the rule when it is not)."""
    try:
        value: int | float = int(text) if rule.kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"must be {rule.describe()}, got {text!r}") from None
    if not rule.accepts(value):
        raise ValueError(f"must be {rule.describe()}, got {text}")
    return value


# generate() parameters and their valid values, as transformers' GenerationConfig.validate states them.
GENERATION_RULES: dict[str, Rule] = {
    "max_new_tokens": POSITIVE_INT,
    "min_new_tokens": NONNEGATIVE_INT,
    "max_length": POSITIVE_INT,
    "min_length": NONNEGATIVE_INT,
    "num_beams": POSITIVE_INT,
    "num_beam_groups": POSITIVE_INT,
    "num_return_sequences": POSITIVE_INT,
    "temperature": POSITIVE_FLOAT,
    "top_k": NONNEGATIVE_INT,
    "top_p": Rule("float", lo=0, hi=1, lo_open=True),
    "typical_p": Rule("float", lo=0, hi=1, lo_open=True),
    "min_p": UNIT_INTERVAL,
    "epsilon_cutoff": Rule("float", lo=0, hi=1, hi_open=True),
    "eta_cutoff": Rule("float", lo=0, hi=1, hi_open=True),
    "repetition_penalty": POSITIVE_FLOAT,
    "length_penalty": FINITE_FLOAT,
    "no_repeat_ngram_size": NONNEGATIVE_INT,
    "diversity_penalty": Rule("float", lo=0),
    "do_sample": Rule("bool"),
}


def check_generation(kwargs: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> None:
    """Refuse generate() parameters outside their valid ranges before any forward pass; a
    ``generation_config`` among them is checked field by field too. ``flags`` maps a parameter
    to the command-line flag to name instead."""
    values = dict(kwargs)
    gen_cfg = values.pop("generation_config", None)
    if gen_cfg is not None:
        values = {**{k: getattr(gen_cfg, k, None) for k in GENERATION_RULES}, **values}
    names = flags or {}
    for key, rule in GENERATION_RULES.items():
        if values.get(key) is not None:
            check(names.get(key, key), values[key], rule)
    beams, groups = values.get("num_beams") or 1, values.get("num_beam_groups") or 1
    returns = values.get("num_return_sequences") or 1
    if beams % groups:
        raise InputError(f"num_beams={beams} must be divisible by num_beam_groups={groups}")
    if not values.get("do_sample") and returns > beams:
        raise InputError(
            f"num_return_sequences={returns} needs sampling or at least as many beams "
            f"(num_beams={beams}); greedy and beam search return at most num_beams sequences"
        )


def context_size(config: Any) -> int | None:
    """The longest sequence the model's positions cover, from its config (None when unbounded)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_context(
    ids: Sequence[int], room: int, what: str, truncate: bool, hint: str = "pass --truncate (truncate=True)"
) -> list[int]:
    """``ids`` if it has at most ``room`` tokens; else its last ``room`` tokens when ``truncate``,
    or an error that says how long it is and how to proceed."""
    if len(ids) <= room:
        return list(ids)
    if room < 1:
        raise InputError(f"{what}: no room is left in the model's context ({room} tokens)")
    if not truncate:
        raise InputError(
            f"{what} has {len(ids)} tokens, more than the {room} that fit in the model's context; "
            f"shorten it, or {hint} to keep its last {room} tokens"
        )
    return list(ids[-room:])


def existing_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a directory; else an error saying what it is instead."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not p.is_dir():
        raise InputError(f"{what} {str(path)!r} is a file, not a directory")
    return p


def existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {str(path)!r} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {str(path)!r} is a directory, not a file")
    return p


def looks_local(name: str) -> bool:
    """True for names only a local path can mean (hub ids are ``name`` or ``owner/name``)."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def check_model_source(name: str, what: str = "base model") -> None:
    """A local model path must exist and be a folder; a hub id passes (checked when loaded)."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"{what} {name!r} is a file; give the folder holding config.json and the weights"
            )
        return
    if looks_local(name):
        raise InputError(f"{what} {name!r} does not exist (it is a local path, not a hub id)")


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], room: int | None, max_new_tokens: int = 0, truncate: bool = False
) -> list[list[int]]:
    """Token ids of each prompt, each checked to leave ``max_new_tokens`` of the ``room`` tokens
    (None: no limit); an empty prompt starts from the BOS (else EOS) token, with a warning."""
    import logging

    if room is not None and max_new_tokens >= room:
        raise InputError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of {room} tokens"
        )
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise InputError(f"prompt {i + 1} must be a string, got {type(prompt).__name__}")
        ids = tokenizer(prompt).input_ids
        if not ids:
            if start is None:
                raise InputError(
                    f"prompt {i + 1} is empty and the tokenizer has no BOS/EOS token to start from"
                )
            logging.getLogger("svdecode").warning(
                "prompt %d is empty: generating from the start token %r",
                i + 1,
                tokenizer.convert_ids_to_tokens(start),
            )
            ids = [start]
        rows.append(
            ids if room is None else fit_context(ids, room - max_new_tokens, f"prompt {i + 1}", truncate)
        )
    return rows


def check_pairs_fit(
    tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], room: int | None, max_length: int | None
) -> None:
    """Refuse (prompt, answer) pairs longer than ``room`` tokens unless ``max_length`` (which cuts
    prompts from the left) makes them fit."""
    check("max_length", max_length, POSITIVE_INT, optional=True)
    if room is None:
        return
    if max_length is not None:
        if max_length > room:
            raise InputError(f"max_length={max_length} exceeds the model's context of {room} tokens")
        return
    p_len = [len(x) for x in tokenizer(list(prompts)).input_ids] if prompts else []
    a_len = [len(x) for x in tokenizer(list(answers), add_special_tokens=False).input_ids] if answers else []
    for i, (p, a) in enumerate(zip(p_len, a_len, strict=True)):
        if p + a > room:
            raise InputError(
                f"pair {i + 1}: prompt and answer have {p + a} tokens, more than the model's context of {room}; "
                "shorten it, or pass max_length (prompts are then cut from the left)"
            )
