"""Command-line options of the warm-start (used by ``svdecode warmstart`` and ``svdecode run``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from svdecode.train.config import (
    METHODS,
    PRECISIONS,
    PROMPT_INITS,
    PTUNING_ENCODERS,
    WarmstartConfig,
    WarmstartError,
    option_flag,
    option_scope,
    validate,
)

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger("svdecode")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_warmstart_args(parser: argparse.ArgumentParser, run_flags: bool = True) -> None:
    """Add the warm-start options (all default to "not given": the config's defaults apply).

    Destinations are prefixed ``ws_`` so they do not collide with other option groups; the flags
    avoid the names other subcommands use (``--method`` is the steering method, ``--seed`` and
    ``--batch-size`` belong to data / scoring). ``run_flags`` adds ``--resume`` and
    ``--overwrite`` (dest ``resume`` / ``overwrite``).
    """
    g = parser.add_argument_group("warm-start (paper defaults, Table 7)")
    a = g.add_argument
    a("--peft", dest="ws_method", choices=METHODS, default=None, help="PEFT method (default lora)")
    a("--lr", dest="ws_lr", type=float, default=None, help="learning rate (5e-5)")
    a("--epochs", dest="ws_epochs", type=float, default=None, help="training epochs (1)")
    a("--max-steps", dest="ws_max_steps", type=int, default=None, help="stop after this many optimizer steps")
    a(
        "--fraction",
        dest="ws_fraction",
        type=float,
        default=None,
        help="train this fraction of the planned epochs, e.g. 0.0625 = 1/16 epoch",
    )
    a("--train-batch-size", dest="ws_batch_size", type=int, default=None, help="batch size (1)")
    a("--grad-accum", dest="ws_grad_accum", type=int, default=None, help="gradient accumulation steps (1)")
    a("--train-max-length", dest="ws_max_length", type=int, default=None, help="max tokens per example (512)")
    a("--train-seed", dest="ws_seed", type=int, default=None, help="training seed (default: --seed, else 0)")
    a("--weight-decay", dest="ws_weight_decay", type=float, default=None)
    a("--warmup-steps", dest="ws_warmup_steps", type=int, default=None)
    a("--lr-scheduler", dest="ws_lr_scheduler", default=None, help="transformers scheduler name (linear)")
    a("--max-grad-norm", dest="ws_max_grad_norm", type=float, default=None)
    a(
        "--logging-steps",
        dest="ws_logging_steps",
        type=int,
        default=None,
        help="log the loss every N steps (10)",
    )
    a("--save-steps", dest="ws_save_steps", type=int, default=None, help="checkpoint every N steps (500)")
    a("--save-total-limit", dest="ws_save_total_limit", type=int, default=None)
    a(
        "--precision",
        dest="ws_precision",
        choices=PRECISIONS,
        default=None,
        help="auto: fp16 on CUDA, else fp32",
    )
    a(
        "--no-eos",
        dest="ws_add_eos",
        action="store_const",
        const=False,
        default=None,
        help="do not append EOS",
    )
    _add_method_flags(g.add_argument)
    _add_parallel_flags(parser)
    if run_flags:
        a("--resume", action="store_true", help="continue an interrupted warm-start from its last checkpoint")
        a(
            "--overwrite",
            action="store_true",
            help="redo every stage, replacing what the output directory holds (or an interrupted warm-start)",
        )


def _add_parallel_flags(parser: argparse.ArgumentParser) -> None:
    """transformers Trainer options for sharded training on several GPUs, passed through as they are
    (docs/scaling.md); plain data parallelism needs none: start the command with torchrun."""
    g = parser.add_argument_group(
        "multi-GPU training (under torchrun / accelerate launch; see docs/scaling.md)"
    )
    g.add_argument(
        "--fsdp", dest="trainer_fsdp", default=None, help='Trainer fsdp, e.g. "full_shard auto_wrap"'
    )
    g.add_argument(
        "--fsdp-config", dest="trainer_fsdp_config", default=None, help="Trainer fsdp_config (JSON file)"
    )
    g.add_argument("--deepspeed", dest="trainer_deepspeed", default=None, help="DeepSpeed config (JSON file)")


def trainer_args_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The TrainingArguments the parallel flags ask for (only those given)."""
    names = ("fsdp", "fsdp_config", "deepspeed")
    return {n: getattr(ns, "trainer_" + n) for n in names if getattr(ns, "trainer_" + n, None) is not None}


def _add_method_flags(a) -> None:
    """The per-method options (LoRA, IA3, prompt learning); ``a`` is a group's ``add_argument``."""
    a("--lora-r", dest="ws_lora_r", type=int, default=None, help="LoRA rank (8)")
    a("--lora-alpha", dest="ws_lora_alpha", type=float, default=None, help="LoRA alpha (16)")
    a("--lora-dropout", dest="ws_lora_dropout", type=float, default=None, help="LoRA dropout (0.1)")
    a("--lora-targets", dest="ws_lora_target_modules", type=_csv, default=None, help="q_proj,v_proj")
    a(
        "--ia3-targets",
        dest="ws_ia3_target_modules",
        type=_csv,
        default=None,
        help="k_proj,v_proj,down_proj,up_proj",
    )
    a(
        "--ia3-feedforward",
        dest="ws_ia3_feedforward_modules",
        type=_csv,
        default=None,
        help="down_proj,up_proj",
    )
    a(
        "--virtual-tokens",
        dest="ws_num_virtual_tokens",
        type=int,
        default=None,
        help="prompt/prefix length (20)",
    )
    a("--prompt-init", dest="ws_prompt_init", choices=PROMPT_INITS, default=None, help="prompt tuning init")
    a("--prompt-init-text", dest="ws_prompt_init_text", default=None)
    a("--ptuning-encoder", dest="ws_ptuning_encoder", choices=PTUNING_ENCODERS, default=None)
    a(
        "--ptuning-hidden",
        dest="ws_ptuning_hidden",
        type=int,
        default=None,
        help="P-Tuning encoder width (128)",
    )
    a(
        "--ptuning-layers",
        dest="ws_ptuning_layers",
        type=int,
        default=None,
        help="P-Tuning encoder layers (2)",
    )
    a("--ptuning-dropout", dest="ws_ptuning_dropout", type=float, default=None)
    a("--prefix-projection", dest="ws_prefix_projection", action="store_const", const=True, default=None)
    a("--prefix-hidden", dest="ws_prefix_hidden", type=int, default=None)
    a("--prefix-init", dest="ws_prefix_init", choices=PROMPT_INITS, default=None, help="prefix tuning init")
    a("--prefix-init-text", dest="ws_prefix_init_text", default=None)


def warmstart_config_from_args(ns: argparse.Namespace) -> WarmstartConfig:
    """A validated config from parsed ``add_warmstart_args`` options. An option given explicitly
    for another method is refused even when its value equals the default."""
    given = {
        f.name: getattr(ns, "ws_" + f.name)
        for f in fields(WarmstartConfig)
        if getattr(ns, "ws_" + f.name, None) is not None
    }
    if "seed" not in given and getattr(ns, "seed", None) is not None:
        given["seed"] = ns.seed
    method = given.get("method", "lora")
    for name in given:
        scope = option_scope(name)
        if method in METHODS and method not in scope:
            raise WarmstartError(
                f"{option_flag(name)} applies only to {' / '.join(scope)}, but the method is "
                f"{method}; drop it, or choose --peft {scope[0]}"
            )
    cfg = WarmstartConfig(**given)
    validate(cfg)
    return cfg
