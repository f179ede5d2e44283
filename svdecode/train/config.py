"""Warm-start settings: :class:`WarmstartConfig` (the paper's defaults, Table 7) states the options;
:func:`validate` checks them on their own, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from svdecode.errors import SvdecodeError

METHODS = ("lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning")


PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")


PROMPT_INITS = ("sample_vocab", "random", "text")


PTUNING_ENCODERS = ("mlp", "lstm")


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class WarmstartError(SvdecodeError, ValueError):
    """A warm-start that cannot run as asked; the message says what to change."""


class AdapterMismatchError(WarmstartError):
    """An adapter (or an interrupted run) and a base model / tokenizer that do not belong together."""


def _scoped(default: Any, methods: Iterable[str], flag: str) -> Any:
    return field(default=default, metadata={"methods": tuple(methods), "flag": flag})


def _common(default: Any, flag: str) -> Any:
    return field(default=default, metadata={"methods": METHODS, "flag": flag})


@dataclass
class WarmstartConfig:
    """Warm-start settings; the defaults are the paper's (Table 7).

    Method-specific options carry the methods they apply to (``option_scope``); a non-default
    value for an option of another method is refused by :func:`validate`.

    Length of training: ``epochs`` (default 1), or ``max_steps`` optimizer steps, or ``fraction``
    of the planned ``epochs`` (e.g. 1/16 of an epoch for a warm-start-length study); ``max_steps``
    and ``fraction`` exclude each other.

    ``precision``: ``auto`` = fp16 mixed precision on CUDA (paper), fp32 elsewhere.
    ``prompt_init`` (Prompt Tuning) / ``prefix_init`` (Prefix Tuning, without projection): where
    the virtual tokens start. ``sample_vocab``: as if random vocabulary tokens were prepended (their
    word embeddings; for prefixes, the keys/values the model computes for them); ``text``: as if
    ``prompt_init_text`` / ``prefix_init_text`` were prepended; ``random``: peft's default, N(0, 1)
    vectors, far off the scale of real embeddings / keys / values (a prefix of those raises the
    loss of SmolLM2-135M from ~3.9 to ~8.8 before training).
    """

    method: str = _common("lora", "--peft")
    # Training (all methods)
    lr: float = _common(5e-5, "--lr")
    batch_size: int = _common(1, "--train-batch-size")
    grad_accum: int = _common(1, "--grad-accum")
    max_length: int = _common(512, "--train-max-length")
    epochs: float = _common(1.0, "--epochs")
    max_steps: int | None = _common(None, "--max-steps")
    fraction: float | None = _common(None, "--fraction")
    seed: int = _common(0, "--train-seed")
    weight_decay: float = _common(0.0, "--weight-decay")
    warmup_steps: int = _common(0, "--warmup-steps")
    lr_scheduler: str = _common("linear", "--lr-scheduler")
    max_grad_norm: float = _common(1.0, "--max-grad-norm")
    logging_steps: int = _common(10, "--logging-steps")
    save_steps: int = _common(500, "--save-steps")
    save_total_limit: int = _common(2, "--save-total-limit")
    precision: str = _common("auto", "--precision")
    add_eos: bool = _common(True, "--no-eos")
    # LoRA
    lora_r: int = _scoped(8, ["lora"], "--lora-r")
    lora_alpha: float = _scoped(16, ["lora"], "--lora-alpha")
    lora_dropout: float = _scoped(0.1, ["lora"], "--lora-dropout")
    lora_target_modules: tuple[str, ...] = _scoped(("q_proj", "v_proj"), ["lora"], "--lora-targets")
    # IA3: attention keys/values + MLP; the feed-forward ones scale their input, not their output
    ia3_target_modules: tuple[str, ...] = _scoped(
        ("k_proj", "v_proj", "down_proj", "up_proj"), ["ia3"], "--ia3-targets"
    )
    ia3_feedforward_modules: tuple[str, ...] = _scoped(("down_proj", "up_proj"), ["ia3"], "--ia3-feedforward")
    # Prompt learning
    num_virtual_tokens: int = _scoped(20, PROMPT_METHODS, "--virtual-tokens")
    prompt_init: str = _scoped("sample_vocab", ["prompt_tuning"], "--prompt-init")
    prompt_init_text: str | None = _scoped(None, ["prompt_tuning"], "--prompt-init-text")
    ptuning_encoder: str = _scoped("mlp", ["p_tuning"], "--ptuning-encoder")
    ptuning_hidden: int = _scoped(128, ["p_tuning"], "--ptuning-hidden")
    ptuning_layers: int = _scoped(2, ["p_tuning"], "--ptuning-layers")
    ptuning_dropout: float = _scoped(0.0, ["p_tuning"], "--ptuning-dropout")
    prefix_projection: bool = _scoped(False, ["prefix_tuning"], "--prefix-projection")
    prefix_hidden: int | None = _scoped(None, ["prefix_tuning"], "--prefix-hidden")
    prefix_init: str = _scoped("sample_vocab", ["prefix_tuning"], "--prefix-init")
    prefix_init_text: str | None = _scoped(None, ["prefix_tuning"], "--prefix-init-text")

    def __post_init__(self) -> None:
        for name in ("lora_target_modules", "ia3_target_modules", "ia3_feedforward_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",")]
            setattr(self, name, tuple(str(v).strip() for v in value if str(v).strip()))

    def non_default_options(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, f.name) != default:
                out[f.name] = getattr(self, f.name)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmstartConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WarmstartError(f"unknown warm-start option(s) {unknown}; known options: {sorted(known)}")
        return cls(**data)


_FIELDS = {f.name: f for f in fields(WarmstartConfig)}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def option_scope(name: str) -> tuple[str, ...]:
    """The methods an option applies to."""
    return _FIELDS[name].metadata["methods"]


def option_flag(name: str) -> str:
    """The command-line flag of an option."""
    return _FIELDS[name].metadata["flag"]


def validate(cfg: WarmstartConfig) -> None:
    """Check the options on their own (no model needed); raise :class:`WarmstartError`."""
    if cfg.method not in METHODS:
        raise WarmstartError(
            f"unknown warm-start method {cfg.method!r}; choose one of {', '.join(METHODS)} (--peft)"
        )
    for name, value in cfg.non_default_options().items():
        scope = option_scope(name)
        if cfg.method not in scope:
            raise WarmstartError(
                f"option {name}={value!r} ({option_flag(name)}) applies only to "
                f"{' / '.join(scope)}, but the method is {cfg.method}; drop it, or choose "
                f"--peft {scope[0]}"
            )
    _check_training_options(cfg)
    _check_method_options(cfg)


def _requirement(cfg: WarmstartConfig):
    """``need(cond, name, what)``: raise a :class:`WarmstartError` naming option, flag and rule."""

    def need(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise WarmstartError(f"{name}={getattr(cfg, name)!r} ({option_flag(name)}): must be {what}")

    return need


def _check_training_options(cfg: WarmstartConfig) -> None:
    need = _requirement(cfg)
    need(_num(cfg.lr) and cfg.lr > 0, "lr", "a positive number")
    need(_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", "an integer >= 1")
    need(_int(cfg.grad_accum) and cfg.grad_accum >= 1, "grad_accum", "an integer >= 1")
    need(_int(cfg.max_length) and cfg.max_length >= 2, "max_length", "an integer >= 2")
    need(_num(cfg.epochs) and cfg.epochs > 0, "epochs", "a positive number")
    need(cfg.max_steps is None or (_int(cfg.max_steps) and cfg.max_steps >= 1), "max_steps", ">= 1")
    need(
        cfg.fraction is None or (_num(cfg.fraction) and 0 < cfg.fraction <= 1),
        "fraction",
        "in (0, 1] (a fraction of the planned epochs; use --epochs for more)",
    )
    if cfg.max_steps is not None and cfg.fraction is not None:
        raise WarmstartError(
            f"give either max_steps ({cfg.max_steps}, --max-steps) or fraction ({cfg.fraction}, "
            "--fraction), not both"
        )
    need(_int(cfg.seed) and 0 <= cfg.seed < 2**32, "seed", "an integer in [0, 2**32)")
    need(_num(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", ">= 0")
    need(_int(cfg.warmup_steps) and cfg.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
    need(_num(cfg.max_grad_norm) and cfg.max_grad_norm >= 0, "max_grad_norm", ">= 0")
    need(_int(cfg.logging_steps) and cfg.logging_steps >= 1, "logging_steps", "an integer >= 1")
    need(_int(cfg.save_steps) and cfg.save_steps >= 1, "save_steps", "an integer >= 1")
    need(_int(cfg.save_total_limit) and cfg.save_total_limit >= 1, "save_total_limit", "an integer >= 1")
    need(cfg.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
    need(isinstance(cfg.add_eos, bool), "add_eos", "true or false")


def _check_method_options(cfg: WarmstartConfig) -> None:
    need = _requirement(cfg)
    if cfg.method == "lora":
        need(_int(cfg.lora_r) and cfg.lora_r >= 1, "lora_r", "an integer >= 1")
        need(_num(cfg.lora_alpha) and cfg.lora_alpha > 0, "lora_alpha", "a positive number")
        need(_num(cfg.lora_dropout) and 0 <= cfg.lora_dropout < 1, "lora_dropout", "in [0, 1)")
        need(bool(cfg.lora_target_modules), "lora_target_modules", "a non-empty list of module names")
    if cfg.method == "ia3":
        need(bool(cfg.ia3_target_modules), "ia3_target_modules", "a non-empty list of module names")
        extra = [m for m in cfg.ia3_feedforward_modules if m not in cfg.ia3_target_modules]
        if extra:
            raise WarmstartError(
                f"IA3 feed-forward modules {extra} (--ia3-feedforward) are not among the IA3 target "
                f"modules {list(cfg.ia3_target_modules)} (--ia3-targets); every feed-forward module "
                "must also be a target"
            )
    if cfg.method in PROMPT_METHODS:
        need(_int(cfg.num_virtual_tokens) and cfg.num_virtual_tokens >= 1, "num_virtual_tokens", ">= 1")
    if cfg.method == "prompt_tuning":
        need(cfg.prompt_init in PROMPT_INITS, "prompt_init", f"one of {PROMPT_INITS}")
        if (cfg.prompt_init == "text") != bool(cfg.prompt_init_text):
            raise WarmstartError(
                "prompt_init='text' (--prompt-init text) and prompt_init_text (--prompt-init-text) go "
                "together: give both or neither"
            )
    if cfg.method == "p_tuning":
        need(cfg.ptuning_encoder in PTUNING_ENCODERS, "ptuning_encoder", f"one of {PTUNING_ENCODERS}")
        need(_int(cfg.ptuning_hidden) and cfg.ptuning_hidden >= 1, "ptuning_hidden", "an integer >= 1")
        need(_int(cfg.ptuning_layers) and cfg.ptuning_layers >= 1, "ptuning_layers", "an integer >= 1")
        need(_num(cfg.ptuning_dropout) and 0 <= cfg.ptuning_dropout < 1, "ptuning_dropout", "in [0, 1)")
        if cfg.ptuning_encoder == "mlp" and cfg.ptuning_layers != 2:
            raise WarmstartError(
                f"ptuning_layers={cfg.ptuning_layers} (--ptuning-layers): peft's MLP prompt encoder "
                "always has 2 layers; use --ptuning-encoder lstm for another depth"
            )
    if cfg.method == "prefix_tuning":
        need(cfg.prefix_init in PROMPT_INITS, "prefix_init", f"one of {PROMPT_INITS}")
        if (cfg.prefix_init == "text") != bool(cfg.prefix_init_text):
            raise WarmstartError(
                "prefix_init='text' (--prefix-init text) and prefix_init_text (--prefix-init-text) go "
                "together: give both or neither"
            )
        if cfg.prefix_projection and cfg.prefix_init != "random":
            raise WarmstartError(
                f"prefix_init={cfg.prefix_init!r} (--prefix-init) sets the prefix keys/values directly, "
                "which a projected prefix (--prefix-projection) does not have; add --prefix-init random"
            )
    if cfg.method == "prefix_tuning" and cfg.prefix_hidden is not None:
        need(_int(cfg.prefix_hidden) and cfg.prefix_hidden >= 1, "prefix_hidden", "an integer >= 1")
        if not cfg.prefix_projection:
            raise WarmstartError(
                "prefix_hidden (--prefix-hidden) sizes the prefix projection MLP; it needs "
                "--prefix-projection"
            )
