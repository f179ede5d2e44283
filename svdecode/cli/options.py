"""The command line's shared option groups and their checks: numbers parsed against their ranges
(argparse names the flag), model sources, steering overrides, data and split options.

Harness module: imported by :mod:`svdecode.cli` (and the subcommands other modules add).
"""

from __future__ import annotations

import argparse
import math

from svdecode import checks


def number_type(rule: checks.Rule):
    """An argparse type: a number within ``rule`` (argparse names the flag in its error)."""

    def parse(text: str) -> int | float:
        try:
            return checks.parse(text, rule)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = rule.kind  # argparse's message for a non-number: "invalid int value"
    return parse


def strength_type(text: str) -> float:
    """An argparse type for a steering strength (:func:`svdecode.checks.check_strength`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    try:
        return checks.check_strength(value, "mu")
    except checks.InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


POS_INT = number_type(checks.POSITIVE_INT)
NONNEG_INT = number_type(checks.NONNEGATIVE_INT)
SEED = number_type(checks.SEED)


KEEP = "keep"


def _lam(text: str) -> float | str:
    """``-inf`` (paper), a float, or ``keep`` (scoring mode: masked tokens keep z_phi)."""
    if text.lower() in (KEEP, "none"):
        return KEEP
    try:
        value = float(text)
    except ValueError:
        value = math.nan  # refused below with the same message
    if math.isnan(value) or value == math.inf:
        raise argparse.ArgumentTypeError(f"lam must be -inf, a finite number or 'keep', got {text}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model")
    src.add_argument(
        "--steered", help="a directory written by SteeredModel.save_pretrained / svdecode calibrate"
    )
    src.add_argument("--adapter", help="a PEFT adapter directory (e.g. from svdecode warmstart)")
    src.add_argument(
        "--base", default=None, help="base model: hub id, local path or 'default' (SmolLM2-135M-Instruct)"
    )
    src.add_argument(
        "--two-pass", action="store_true", help="never use one mixed-adapter forward pass (LoRA)"
    )
    src.add_argument(
        "--force",
        action="store_true",
        help="load the adapter even onto a base whose fingerprint differs from the one it was trained on",
    )
    add_placement_args(src)


# The weights' dtypes the CLI offers (svdecode.model.loading.resolve_dtype also takes their aliases).
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def add_placement_args(group) -> None:
    group.add_argument(
        "--dtype",
        default="float32",
        type=str.lower,
        choices=DTYPE_NAMES,
        help="weights' dtype (auto = the checkpoint's); the steering math is fp32 whatever this is",
    )
    group.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: cpu, or --device-map's)"
    )
    group.add_argument(
        "--device-map", default=None, help="transformers/accelerate placement, e.g. auto (excludes --device)"
    )


def add_steering_args(p: argparse.ArgumentParser) -> None:
    st = p.add_argument_group("steering")
    st.add_argument(
        "--mu",
        type=strength_type,
        default=None,
        help="steering strength (default: the calibrated one)",
    )
    st.add_argument(
        "--alpha",
        type=number_type(checks.UNIT_INTERVAL),
        default=None,
        help="confidence-mask threshold (eq. 12; paper 0.1)",
    )
    st.add_argument(
        "--lam", type=_lam, default=None, help="value for masked tokens: -inf (paper), a float, or 'keep'"
    )
    st.add_argument(
        "--method", default=None, choices=("svdecode", "prob_space", "logit_arithmetic", "adapted", "base")
    )


def check_model_sources(ns: argparse.Namespace) -> None:
    """--steered / --adapter must be folders, --base an existing folder or a hub id: checked
    before anything loads; never both (one of them would be ignored)."""
    if getattr(ns, "steered", None) and getattr(ns, "adapter", None):
        raise checks.InputError(
            f"give --steered {ns.steered} (the adapter with its calibrated steering) or --adapter {ns.adapter} "
            "(the plain adapter), not both: a steered directory carries its own adapter"
        )
    if getattr(ns, "steered", None):
        checks.existing_dir(ns.steered, "--steered")
    if getattr(ns, "adapter", None):
        checks.existing_dir(ns.adapter, "--adapter")
    if getattr(ns, "base", None):
        checks.check_model_source(ns.base, "--base")


def add_split_args(p: argparse.ArgumentParser, min_calib: int = 0) -> None:
    s = p.add_argument_group("split (seeded with --seed, recorded in split_manifest.json)")
    n_calib_type = number_type(checks.Rule("int", lo=min_calib))  # `run` calibrates: it needs one at least
    s.add_argument(
        "--n-train", type=POS_INT, default=None, help="training examples (default: all not held out)"
    )
    s.add_argument(
        "--n-calib", type=n_calib_type, default=128, help="calibration examples held out of training"
    )
    s.add_argument("--n-test", type=NONNEG_INT, default=None, help="test examples held out of training")


def add_data_args(p: argparse.ArgumentParser, default_split: str = "train") -> None:
    d = p.add_argument_group("data")
    d.add_argument(
        "--data",
        required=True,
        help="commonsense:<names|all>, truthfulqa, a .jsonl/.json/.csv file, or hub:<name>",
    )
    d.add_argument("--split", default=default_split)
    d.add_argument("--prompt-col", default="prompt")
    d.add_argument("--answer-col", default="answer")
    d.add_argument("--limit", type=POS_INT, default=None, help="use a seeded subset of this many examples")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument(
        "--skip-bad-rows", action="store_true", help="skip malformed rows (counted) instead of failing"
    )


class VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from svdecode.versions import dependency_versions

        for name, version in dependency_versions().items():
            print(f"{name} {version}")
        parser.exit()


def read_prompt_file(path: str | None) -> list[str]:
    """The non-empty lines of ``--prompt-file``."""
    if not path:
        return []
    try:
        lines = checks.existing_file(path, "--prompt-file").read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise checks.InputError(f"--prompt-file {path!r} is not UTF-8 text: {err}") from err
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise checks.InputError(f"--prompt-file {path!r} holds no prompt (every line is empty)")
    return prompts


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """How the strength is calibrated (svdecode.calibration.selection): objective, guard, folds, bins."""
    from svdecode.calibration.objectives import (
        CHOOSABLE,
        DEFAULT_BINS,
        DEFAULT_FOLDS,
        DEFAULT_OBJECTIVE,
        MAX_BINS,
    )

    c = p.add_argument_group("calibration of the strength")
    c.add_argument(
        "--objective",
        default=DEFAULT_OBJECTIVE,
        choices=CHOOSABLE,
        help="auto (default): every candidate below cross-validated, the best applied if nested "
        "cross-validation finds a gain; or force one: choice: most probability on the correct "
        "options of the data's choices; nll: exact minimiser of the steered NLL; task: best task "
        "metric on the data's choices; mean/median/trimmed/pooled: the paper's estimators; binned: "
        "one nll strength per confidence bin (--confidence-bins)",
    )
    c.add_argument("--estimator", dest="objective", choices=CHOOSABLE, help=argparse.SUPPRESS)  # old name
    c.add_argument(
        "--no-guard",
        action="store_true",
        help="apply the chosen fit even if nested cross-validation finds no held-out gain",
    )
    c.add_argument(
        "--folds", type=number_type(checks.Rule("int", lo=2)), default=DEFAULT_FOLDS, help="guard's CV folds"
    )
    c.add_argument(
        "--confidence-bins",
        type=number_type(checks.Rule("int", lo=0, hi=MAX_BINS)),
        default=DEFAULT_BINS,
        help="also fit one strength per bin of the adapted model's confidence (kept only if "
        "cross-validation prefers it); 0 or 1: off",
    )
