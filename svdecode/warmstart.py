"""Step 1 of SVDecode: the warm-start, a short PEFT fine-tune of the base model on the task.

``warmstart(examples, out_dir, cfg)`` trains one adapter (LoRA, IA3, Prompt Tuning, P-Tuning or
Prefix Tuning) with the paper's settings (Table 7) and writes it to ``out_dir``:

* ``adapter_config.json`` + ``adapter_model.safetensors`` (``PeftModel.save_pretrained``),
* the tokenizer, ``split_manifest.json`` (when a manifest is given), ``train_log.jsonl`` (one JSON
  object per logged step: step, epoch, loss, lr, grad_norm) and ``warmstart.json`` (config,
  timings, losses, counts, base-model fingerprint, library versions).

Everything is validated before training starts, so a bad option never costs a training run and
never creates a directory. Training happens in ``<out>.partial/`` (checkpoints in
``<out>.partial/checkpoints``); only a finished run is renamed to ``<out>``, so a crash never leaves
a directory that looks complete, and ``resume=True`` continues the interrupted run from its last
checkpoint.

The loss is on answer tokens only: prompt and padding positions carry label -100. Prompt and
answer are tokenised separately (prompt with the tokenizer's special tokens, answer without, then
EOS), the same way :func:`svdecode.scoring.encode_pairs` tokenises them for scoring.

Heavy libraries (torch, transformers, peft) are imported inside the functions, so the CLI can
import this module to build its argument parser without paying for them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from svdecode.data import Example

log = logging.getLogger("svdecode")

METHODS = ("lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning")
PROMPT_METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")
PROMPT_INITS = ("sample_vocab", "random", "text")
PTUNING_ENCODERS = ("mlp", "lstm")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

FORMAT_VERSION = 1
INFO_NAME = "warmstart.json"
LOG_NAME = "train_log.jsonl"
MANIFEST_NAME = "split_manifest.json"
REQUEST_NAME = "warmstart_request.json"  # in the partial dir: what the interrupted run was asked to do
CHECKPOINT_DIR = "checkpoints"
# Written last into every checkpoint: the exact trainable parameters (peft saves only the *output*
# of a P-Tuning / projected-prefix encoder, which cannot be trained further), and the marker that
# the checkpoint is complete.
TRAINABLE_NAME = "svdecode_trainable.safetensors"
PARTIAL_SUFFIX = ".partial"
# Options that may change between an interrupted run and its resumption.
RESUME_FREE_OPTIONS = {"logging_steps", "save_steps", "save_total_limit"}


class WarmstartError(ValueError):
    """A warm-start that cannot run as asked; the message says what to change."""


class AdapterMismatchError(WarmstartError):
    """An adapter (or an interrupted run) and a base model / tokenizer that do not belong together."""


# ---------------------------------------------------------------------------------------------
# Configuration


def _scoped(default: Any, methods: Iterable[str], flag: str) -> Any:
    return field(default=default, metadata={"methods": tuple(methods), "flag": flag})


def _common(default: Any, flag: str) -> Any:
    return field(default=default, metadata={"methods": METHODS, "flag": flag})


@dataclass
class WarmstartConfig:
    """Warm-start settings; the defaults are the paper's (Table 7).

    Method-specific options carry the methods they apply to (``option_scope``); a non-default
    value for an option of another method is refused by :meth:`validate`.

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

    # -- introspection ------------------------------------------------------------------------
    @staticmethod
    def option_scope(name: str) -> tuple[str, ...]:
        """The methods an option applies to."""
        return _FIELDS[name].metadata["methods"]

    @staticmethod
    def option_flag(name: str) -> str:
        return _FIELDS[name].metadata["flag"]

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

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the options on their own (no model needed); raise :class:`WarmstartError`."""
        if self.method not in METHODS:
            raise WarmstartError(
                f"unknown warm-start method {self.method!r}; choose one of {', '.join(METHODS)} (--peft)"
            )
        for name, value in self.non_default_options().items():
            scope = self.option_scope(name)
            if self.method not in scope:
                raise WarmstartError(
                    f"option {name}={value!r} ({self.option_flag(name)}) applies only to "
                    f"{' / '.join(scope)}, but the method is {self.method}; drop it, or choose "
                    f"--peft {scope[0]}"
                )

        def need(cond: bool, name: str, what: str) -> None:
            if not cond:
                raise WarmstartError(
                    f"{name}={getattr(self, name)!r} ({self.option_flag(name)}): must be {what}"
                )

        need(_num(self.lr) and self.lr > 0, "lr", "a positive number")
        need(_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(_int(self.grad_accum) and self.grad_accum >= 1, "grad_accum", "an integer >= 1")
        need(_int(self.max_length) and self.max_length >= 2, "max_length", "an integer >= 2")
        need(_num(self.epochs) and self.epochs > 0, "epochs", "a positive number")
        need(self.max_steps is None or (_int(self.max_steps) and self.max_steps >= 1), "max_steps", ">= 1")
        need(
            self.fraction is None or (_num(self.fraction) and 0 < self.fraction <= 1),
            "fraction",
            "in (0, 1] (a fraction of the planned epochs; use --epochs for more)",
        )
        if self.max_steps is not None and self.fraction is not None:
            raise WarmstartError(
                f"give either max_steps ({self.max_steps}, --max-steps) or fraction ({self.fraction}, "
                "--fraction), not both"
            )
        need(_int(self.seed), "seed", "an integer")
        need(_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", ">= 0")
        need(_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
        need(_num(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm", ">= 0")
        need(_int(self.logging_steps) and self.logging_steps >= 1, "logging_steps", "an integer >= 1")
        need(_int(self.save_steps) and self.save_steps >= 1, "save_steps", "an integer >= 1")
        need(
            _int(self.save_total_limit) and self.save_total_limit >= 1, "save_total_limit", "an integer >= 1"
        )
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(isinstance(self.add_eos, bool), "add_eos", "true or false")
        if self.method == "lora":
            need(_int(self.lora_r) and self.lora_r >= 1, "lora_r", "an integer >= 1")
            need(_num(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "a positive number")
            need(_num(self.lora_dropout) and 0 <= self.lora_dropout < 1, "lora_dropout", "in [0, 1)")
            need(bool(self.lora_target_modules), "lora_target_modules", "a non-empty list of module names")
        if self.method == "ia3":
            need(bool(self.ia3_target_modules), "ia3_target_modules", "a non-empty list of module names")
            extra = [m for m in self.ia3_feedforward_modules if m not in self.ia3_target_modules]
            if extra:
                raise WarmstartError(
                    f"IA3 feed-forward modules {extra} (--ia3-feedforward) are not among the IA3 target "
                    f"modules {list(self.ia3_target_modules)} (--ia3-targets); every feed-forward module "
                    "must also be a target"
                )
        if self.method in PROMPT_METHODS:
            need(_int(self.num_virtual_tokens) and self.num_virtual_tokens >= 1, "num_virtual_tokens", ">= 1")
        if self.method == "prompt_tuning":
            need(self.prompt_init in PROMPT_INITS, "prompt_init", f"one of {PROMPT_INITS}")
            if (self.prompt_init == "text") != bool(self.prompt_init_text):
                raise WarmstartError(
                    "prompt_init='text' (--prompt-init text) and prompt_init_text (--prompt-init-text) go "
                    "together: give both or neither"
                )
        if self.method == "p_tuning":
            need(self.ptuning_encoder in PTUNING_ENCODERS, "ptuning_encoder", f"one of {PTUNING_ENCODERS}")
            need(_int(self.ptuning_hidden) and self.ptuning_hidden >= 1, "ptuning_hidden", "an integer >= 1")
            need(_int(self.ptuning_layers) and self.ptuning_layers >= 1, "ptuning_layers", "an integer >= 1")
            need(_num(self.ptuning_dropout) and 0 <= self.ptuning_dropout < 1, "ptuning_dropout", "in [0, 1)")
            if self.ptuning_encoder == "mlp" and self.ptuning_layers != 2:
                raise WarmstartError(
                    f"ptuning_layers={self.ptuning_layers} (--ptuning-layers): peft's MLP prompt encoder "
                    "always has 2 layers; use --ptuning-encoder lstm for another depth"
                )
        if self.method == "prefix_tuning":
            need(self.prefix_init in PROMPT_INITS, "prefix_init", f"one of {PROMPT_INITS}")
            if (self.prefix_init == "text") != bool(self.prefix_init_text):
                raise WarmstartError(
                    "prefix_init='text' (--prefix-init text) and prefix_init_text (--prefix-init-text) go "
                    "together: give both or neither"
                )
            if self.prefix_projection and self.prefix_init != "random":
                raise WarmstartError(
                    f"prefix_init={self.prefix_init!r} (--prefix-init) sets the prefix keys/values directly, "
                    "which a projected prefix (--prefix-projection) does not have; add --prefix-init random"
                )
        if self.method == "prefix_tuning" and self.prefix_hidden is not None:
            need(_int(self.prefix_hidden) and self.prefix_hidden >= 1, "prefix_hidden", "an integer >= 1")
            if not self.prefix_projection:
                raise WarmstartError(
                    "prefix_hidden (--prefix-hidden) sizes the prefix projection MLP; it needs "
                    "--prefix-projection"
                )


_FIELDS = {f.name: f for f in fields(WarmstartConfig)}


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------------------
# Model-dependent checks and the peft config


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct leaf names of the model's Linear (and GPT-2 style Conv1D) modules."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _check_targets(model: torch.nn.Module, option: str, targets: Sequence[str]) -> None:
    import torch

    if option == "lora_target_modules" and list(targets) == ["all-linear"]:
        return
    module_names = [
        n
        for n, m in model.named_modules()
        if n and (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    ]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise WarmstartError(
            f"target module(s) {missing} ({WarmstartConfig.option_flag(option)}) match no Linear module of "
            f"the model ({type(model).__name__}); its Linear modules are named: "
            f"{', '.join(linear_module_names(model))}"
        )


def check_model(
    cfg: WarmstartConfig, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Check that the config fits this model (and tokenizer); raise :class:`WarmstartError`."""
    from peft import PeftModel

    cfg.validate()
    if isinstance(model, PeftModel):
        raise WarmstartError(
            "the model already carries a PEFT adapter; pass the plain base model to warm-start, "
            "or merge the adapter first (merge_and_unload)"
        )
    if cfg.method == "lora":
        _check_targets(model, "lora_target_modules", cfg.lora_target_modules)
    elif cfg.method == "ia3":
        _check_targets(model, "ia3_target_modules", cfg.ia3_target_modules)
    else:
        mc = model.config
        missing = [a for a in ("num_hidden_layers", "hidden_size") if getattr(mc, a, None) is None]
        if missing:
            raise WarmstartError(
                f"{cfg.method} needs the model config to give {missing}; {type(model).__name__} does not"
            )
        if cfg.method in ("prompt_tuning", "p_tuning") and not hasattr(
            model, "prepare_inputs_for_generation"
        ):
            raise WarmstartError(
                f"{cfg.method} needs a generation-capable causal LM (prepare_inputs_for_generation); "
                f"{type(model).__name__} has none"
            )
    if tokenizer is not None:
        v_model = _vocab_size(model)
        if len(tokenizer) > v_model:
            raise WarmstartError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {v_model} output rows; "
                "they do not belong together (use the base model's own tokenizer)"
            )
    from transformers import SchedulerType

    try:
        SchedulerType(cfg.lr_scheduler)
    except ValueError as err:
        raise WarmstartError(
            f"lr_scheduler={cfg.lr_scheduler!r} (--lr-scheduler) is not a transformers scheduler; choose one of "
            f"{', '.join(t.value for t in SchedulerType)}"
        ) from err
    precision = _precision(cfg)
    if precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise WarmstartError("precision fp16 (--precision) needs a CUDA GPU; use fp32 (or auto)")


def _precision(cfg: WarmstartConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    import torch

    return "fp16" if torch.cuda.is_available() else "fp32"


def peft_config(cfg: WarmstartConfig, model: torch.nn.Module | None = None) -> PeftConfig:
    """The peft config for ``cfg`` (``model`` is checked against it when given)."""
    from peft import (
        IA3Config,
        LoraConfig,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
    )

    if model is not None:
        check_model(cfg, model)
    else:
        cfg.validate()
    task = TaskType.CAUSAL_LM
    if cfg.method == "lora":
        targets: Any = list(cfg.lora_target_modules)
        if targets == ["all-linear"]:
            targets = "all-linear"
        return LoraConfig(
            task_type=task,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
    if cfg.method == "ia3":
        return IA3Config(
            task_type=task,
            target_modules=list(cfg.ia3_target_modules),
            feedforward_modules=list(cfg.ia3_feedforward_modules),
        )
    if cfg.method == "prompt_tuning":
        init = {"sample_vocab": "SAMPLE_VOCAB", "random": "RANDOM", "text": "TEXT"}[cfg.prompt_init]
        kwargs: dict[str, Any] = {}
        if init == "TEXT":
            # peft loads the tokenizer by name; warmstart() points this at the run's saved tokenizer.
            kwargs = {"prompt_tuning_init_text": cfg.prompt_init_text, "tokenizer_name_or_path": "."}
        return PromptTuningConfig(
            task_type=task, num_virtual_tokens=cfg.num_virtual_tokens, prompt_tuning_init=init, **kwargs
        )
    if cfg.method == "p_tuning":
        return PromptEncoderConfig(
            task_type=task,
            num_virtual_tokens=cfg.num_virtual_tokens,
            encoder_reparameterization_type=cfg.ptuning_encoder.upper(),
            encoder_hidden_size=cfg.ptuning_hidden,
            encoder_num_layers=cfg.ptuning_layers,
            encoder_dropout=cfg.ptuning_dropout,
        )
    kwargs = {"encoder_hidden_size": cfg.prefix_hidden} if cfg.prefix_hidden else {}
    return PrefixTuningConfig(
        task_type=task,
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.prefix_projection,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# Tokenisation: a lazy dataset and a padding collator


def _answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str, add_eos: bool) -> list[int]:
    ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str, max_length: int, add_eos: bool = True
) -> dict[str, list[int]]:
    """``input_ids`` = prompt (with the tokenizer's special tokens) + answer (+ EOS), cut to
    ``max_length`` from the right; ``labels`` = -100 on the prompt, the token ids on the answer."""
    p_ids = list(tokenizer(prompt, add_special_tokens=True).input_ids)
    a_ids = _answer_ids(tokenizer, answer, add_eos)
    ids = (p_ids + a_ids)[:max_length]
    labels = ([-100] * len(p_ids) + a_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class LazyExamples:
    """A map-style dataset over ``examples[indices]`` that tokenises in ``__getitem__``: memory
    holds the examples you passed and one batch of token ids, never the tokenised data set."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        add_eos: bool = True,
        indices: Sequence[int] | None = None,
    ):
        self.examples = examples
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.add_eos = add_eos
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[self.indices[i] if self.indices is not None else i]
        return encode_example(self.tokenizer, ex.prompt, ex.answer, self.max_length, self.add_eos)


class PadCollator:
    """Right-pads ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels`` (-100)."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@dataclass
class _Scan:
    kept: list[int]
    no_answer: list[str]  # ids of examples whose answer tokenises to nothing
    truncated_away: list[str]  # ids of examples whose prompt fills max_length
    answer_tokens: int  # answer tokens trained on per epoch (after truncation)
    cut: int  # kept examples that lose some answer tokens to max_length
    longest: int = 0  # the longest kept example in tokens, after truncation


def scan_examples(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, cfg: WarmstartConfig, chunk: int = 1024
) -> _Scan:
    """Token lengths of every example (kept only as counts): which ones have at least one answer
    token inside ``max_length``. Tokenises in chunks, keeps no token ids."""
    kept: list[int] = []
    no_answer: list[str] = []
    gone: list[str] = []
    tokens = cut = longest = 0
    eos = 1 if cfg.add_eos and tokenizer.eos_token_id is not None else 0
    for start in range(0, len(examples), chunk):
        part = [examples[i] for i in range(start, min(start + chunk, len(examples)))]
        p_lens = [len(x) for x in tokenizer([e.prompt for e in part], add_special_tokens=True).input_ids]
        a_lens = [len(x) for x in tokenizer([e.answer for e in part], add_special_tokens=False).input_ids]
        for j, (ex, pl, al) in enumerate(zip(part, p_lens, a_lens, strict=True)):
            if al == 0:
                no_answer.append(ex.id)
            elif pl >= cfg.max_length:
                gone.append(ex.id)
            else:
                kept.append(start + j)
                survive = min(al + eos, cfg.max_length - pl)
                tokens += survive
                cut += survive < al + eos
                longest = max(longest, pl + survive)
    return _Scan(kept, no_answer, gone, tokens, cut, longest)


# ---------------------------------------------------------------------------------------------
# Output directory state


def partial_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def is_complete(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a finished warm-start (adapter + ``warmstart.json``)."""
    out = Path(out_dir)
    info = out / INFO_NAME
    if not (info.is_file() and (out / "adapter_config.json").is_file()):
        return False
    try:
        return json.loads(info.read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def read_info(out_dir: str | Path) -> dict[str, Any]:
    """The ``warmstart.json`` of a finished warm-start."""
    path = Path(out_dir) / INFO_NAME
    if not path.is_file():
        raise WarmstartError(f"{str(out_dir)!r} has no {INFO_NAME}; it is not a finished warm-start")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WarmstartError(f"{path} is not valid JSON: {err}") from err


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.name.endswith(PARTIAL_SUFFIX):
        raise WarmstartError(f"the output directory {str(out)!r} must not end in {PARTIAL_SUFFIX!r}")
    if not out.exists():
        return
    if not out.is_dir():
        raise WarmstartError(f"{str(out)!r} exists and is not a directory; choose another output directory")
    if is_complete(out):
        if not overwrite:
            raise WarmstartError(
                f"{str(out)!r} already holds a finished warm-start; use it as it is, or pass "
                "overwrite=True (--overwrite) to train it again"
            )
        return
    if any(out.iterdir()):
        raise WarmstartError(
            f"{str(out)!r} exists, is not empty and is not a finished warm-start; refusing to replace it. "
            "Choose another output directory or remove it yourself"
        )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Base-model fingerprint: what an adapter must be reloaded onto


def _vocab_size(model: torch.nn.Module) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is None:
        emb = model.get_input_embeddings()
    return int(emb.weight.shape[0])


def base_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Architecture numbers plus the L1 norms of 16 input-embedding rows: equal for the same
    weights whatever the path or dtype they were loaded with, different for another model."""
    import torch

    mc = model.config
    emb = model.get_input_embeddings().weight
    rows = torch.linspace(0, emb.shape[0] - 1, steps=min(16, emb.shape[0])).long()
    with torch.no_grad():
        probe = emb[rows.to(emb.device)].detach().double().abs().sum(dim=1).cpu().tolist()
    return {
        "model_type": getattr(mc, "model_type", None),
        "vocab_size": _vocab_size(model),
        "hidden_size": getattr(mc, "hidden_size", None),
        "num_hidden_layers": getattr(mc, "num_hidden_layers", None),
        "embedding_probe": [round(x, 6) for x in probe],
    }


def compare_fingerprints(recorded: dict[str, Any], model: torch.nn.Module, what: str) -> None:
    """Raise :class:`AdapterMismatchError` when ``model`` is not the base ``recorded`` describes."""
    now = base_fingerprint(model)
    for key in ("vocab_size", "model_type", "hidden_size", "num_hidden_layers"):
        if recorded.get(key) is not None and recorded.get(key) != now[key]:
            raise AdapterMismatchError(
                f"{what} was trained on a base model with {key}={recorded[key]!r}, but the given model has "
                f"{key}={now[key]!r}; load it onto the base model it was trained from"
            )
    old, new = recorded.get("embedding_probe"), now["embedding_probe"]
    if old and len(old) == len(new):
        worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(old, new, strict=True))
        if worst > 1e-3:
            raise AdapterMismatchError(
                f"{what} was trained on a base model with other weights than the given one (same "
                f"architecture, embedding rows differ by {worst:.2%}); load it onto the base model it was "
                "trained from, or pass strict=False if you mean to"
            )


def _same_name(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return True
    try:
        from svdecode.models import DEFAULT_ALIASES
    except ImportError:  # pragma: no cover
        DEFAULT_ALIASES = {"default"}
    if a in DEFAULT_ALIASES and b in DEFAULT_ALIASES:
        return True
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _model_name(model: torch.nn.Module) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    return str(name) if name else None


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class WarmstartResult:
    out_dir: Path
    adapter_dir: Path  # the same folder: adapter files sit at its root
    method: str
    final_loss: float | None  # the last logged training loss
    mean_loss: float | None  # mean loss over the run (Trainer's train_loss)
    steps: int  # optimizer steps done (global step)
    seconds: float  # wall time of training
    num_examples: int  # examples trained on (after dropping those without answer tokens)
    resumed_from_step: int | None = None
    model: Any = field(default=None, repr=False)  # the trained PeftModel (eval mode)
    info: dict[str, Any] = field(default_factory=dict, repr=False)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("svdecode", "torch", "transformers", "peft", "accelerate"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - reporting only
            out[mod] = "?"
    return out


def _data_fingerprint(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        for part in (ex.id, ex.prompt, ex.answer):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
    return h.hexdigest()


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``<run_dir>/checkpoints`` (one whose trainable-state
    file, written last, exists), or None."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("checkpoint-*")
        if _checkpoint_step(p) >= 0
        and (p / TRAINABLE_NAME).is_file()
        and (p / "trainer_state.json").is_file()
    ]
    return max(done, key=_checkpoint_step) if done else None


def _trainer_classes():
    """Trainer subclass + callbacks, defined lazily so importing this module stays light."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Trainer, TrainerCallback

    class WarmstartTrainer(Trainer):
        """Saves the exact trainable parameters into each checkpoint, last (the completeness
        marker), and restores them on resume. peft's adapter file alone is not enough for P-Tuning
        and projected prefixes: it holds the encoder's *output*, which cannot be trained further."""

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            ckpt = (
                Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            if self.args.should_save and ckpt.is_dir():
                state = {
                    n: p.detach().to("cpu").contiguous()
                    for n, p in self.model.named_parameters()
                    if p.requires_grad
                }
                tmp = ckpt / (TRAINABLE_NAME + ".tmp")
                save_file(state, str(tmp))
                os.replace(tmp, ckpt / TRAINABLE_NAME)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint) / TRAINABLE_NAME
            target = model if model is not None else self.model
            if path.is_file():
                state = load_file(str(path))
                params = dict(target.named_parameters())
                missing = [n for n in state if n not in params]
                if missing:
                    raise AdapterMismatchError(
                        f"checkpoint {resume_from_checkpoint} holds parameters the model lacks: {missing[:5]}"
                    )
                with torch.no_grad():
                    for n, t in state.items():
                        if params[n].shape != t.shape:
                            raise AdapterMismatchError(
                                f"checkpoint {resume_from_checkpoint}: {n} has shape {tuple(t.shape)}, "
                                f"the model {tuple(params[n].shape)}"
                            )
                        params[n].copy_(t.to(params[n].device, params[n].dtype))

    class LossLog(TrainerCallback):
        """Appends one JSON line per logged step to ``train_log.jsonl``."""

        def __init__(self, path: Path):
            self.path = path
            self.last_loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            rec = {
                "step": state.global_step,
                "epoch": logs.get("epoch", state.epoch),
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "time": round(time.time(), 3),
            }
            self.last_loss = float(logs["loss"])
            with self.path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")

    return WarmstartTrainer, LossLog


def _trim_log(path: Path, max_step: int) -> None:
    """Keep only log lines up to ``max_step`` (the checkpoint a resumed run restarts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= max_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(k + "\n" for k in keep))


def _planned_steps(cfg: WarmstartConfig, n: int) -> int | None:
    """max_steps for the Trainer: cfg.max_steps, or fraction x epochs x update steps per epoch."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.fraction is None:
        return None
    per_epoch = max(math.ceil(math.ceil(n / cfg.batch_size) / cfg.grad_accum), 1)
    return max(1, math.ceil(cfg.fraction * cfg.epochs * per_epoch))


def warmstart(
    examples: Sequence[Example],
    out_dir: str | Path,
    cfg: WarmstartConfig | None = None,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    base: str | None = None,
    manifest: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
    keep_checkpoints: bool = False,
) -> WarmstartResult:
    """Warm-start a PEFT adapter on ``examples`` and write it to ``out_dir`` (see the module doc).

    ``model``/``tokenizer``: an already loaded base model (it is wrapped in place by peft; the
    trained ``PeftModel`` comes back as ``result.model``). Without them ``base`` (default
    ``"default"``, SmolLM2-135M-Instruct) is loaded with :func:`svdecode.models.load_base`. ``base``
    is also the name recorded as the adapter's base model (default: the model's own path).
    ``manifest``: the split manifest, saved as ``split_manifest.json``.
    ``resume``: continue an interrupted run from the last checkpoint in ``<out>.partial``
    (without one, start afresh); ``overwrite``: replace a finished ``out_dir``.
    ``callbacks``: extra ``transformers.TrainerCallback`` objects.

    Every check runs before training and before any directory is created; failures raise
    :class:`WarmstartError` (or :class:`AdapterMismatchError`) saying what to change.
    """
    cfg = cfg or WarmstartConfig()
    cfg.validate()
    if examples is None or len(examples) == 0:
        raise WarmstartError(
            "the training set is empty: nothing to warm-start on (check the data / split / --limit)"
        )
    if not all(hasattr(examples[0], a) for a in ("id", "prompt", "answer")):
        raise WarmstartError(
            f"examples must be svdecode.data.Example objects (id, prompt, answer), got {type(examples[0]).__name__}"
        )
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    part = partial_dir(out)

    if model is None:
        from svdecode.models import load_base

        model, loaded_tok = load_base(base or "default")
        tokenizer = tokenizer or loaded_tok
        base_name = base or "default"
    else:
        base_name = base or _model_name(model)
        if tokenizer is None:
            raise WarmstartError("a model was given without its tokenizer; pass tokenizer= as well")
    if tokenizer is None:  # pragma: no cover - load_base always returns one
        raise WarmstartError("no tokenizer")
    check_model(cfg, model, tokenizer)

    scan = scan_examples(examples, tokenizer, cfg)
    if not scan.kept:
        parts = []
        if scan.truncated_away:
            parts.append(
                f"{len(scan.truncated_away)} example(s) have prompts of max_length={cfg.max_length} tokens or "
                "more, so no answer token survives truncation: raise --train-max-length"
            )
        if scan.no_answer:
            parts.append(f"{len(scan.no_answer)} example(s) have an answer that tokenises to nothing")
        raise WarmstartError(
            f"none of the {len(examples)} training examples has an answer token to learn from: "
            + "; ".join(parts)
        )
    for ids, why in (
        (scan.truncated_away, f"whose prompt fills max_length={cfg.max_length} (no answer token left)"),
        (scan.no_answer, "whose answer tokenises to nothing"),
    ):
        if ids:
            log.warning(
                "warm-start: leaving out %d of %d examples %s, e.g. %s",
                len(ids),
                len(examples),
                why,
                ", ".join(ids[:3]),
            )
    if scan.cut:
        log.warning(
            "warm-start: %d example(s) lose part of their answer to max_length=%d", scan.cut, cfg.max_length
        )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    extra = cfg.num_virtual_tokens if cfg.method in PROMPT_METHODS else 0  # prefixes take positions too
    if max_pos and scan.longest + extra > max_pos:
        log.warning(
            "warm-start: the longest example has %d tokens (+%d virtual tokens), more than the model's "
            "max_position_embeddings %d",
            scan.longest,
            extra,
            max_pos,
        )

    fingerprint = base_fingerprint(model)
    request = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "base": base_name,
        "base_fingerprint": fingerprint,
        "tokenizer_size": len(tokenizer),
        "num_examples": len(examples),
        "data_sha256": _data_fingerprint(examples),
    }

    resume_ckpt: Path | None = None
    if part.exists():
        if resume and (part / REQUEST_NAME).is_file():
            _check_resumable(part, request, model)
            resume_ckpt = last_checkpoint(part)
            if resume_ckpt is None:
                log.warning("warm-start: %s has no complete checkpoint yet; starting from step 0", part)
        elif resume:
            log.warning("warm-start: %s is not a resumable run; starting from step 0", part)
    elif resume:
        log.info("warm-start: nothing to resume in %s; starting from step 0", part)

    args = _training_args(cfg, part, len(scan.kept), progress)

    # ---- from here on the run writes to disk ----
    if part.exists() and resume_ckpt is None:
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    log_path = part / LOG_NAME
    if resume_ckpt is None:
        _write_json(part / REQUEST_NAME, request)
        log_path.write_text("")
    else:
        _trim_log(log_path, _checkpoint_step(resume_ckpt))

    return _train(
        examples, out, part, cfg, model, tokenizer, base_name, manifest, scan, request, resume_ckpt, args,
        progress=progress, callbacks=callbacks, keep_checkpoints=keep_checkpoints,
    )  # fmt: skip


def _check_resumable(part: Path, request: dict[str, Any], model: torch.nn.Module) -> None:
    try:
        old = json.loads((part / REQUEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WarmstartError(
            f"cannot read {part / REQUEST_NAME} to resume: {err}; rerun without --resume"
        ) from err
    diffs = [
        f"{k}: {old['config'].get(k)!r} -> {v!r}"
        for k, v in request["config"].items()
        if k not in RESUME_FREE_OPTIONS and old.get("config", {}).get(k) != v
    ]
    if diffs:
        raise WarmstartError(
            f"cannot resume {part}: the interrupted run used other options ({'; '.join(diffs)}); use the same "
            "options, or rerun without --resume to start over"
        )
    if old.get("data_sha256") != request["data_sha256"]:
        raise WarmstartError(
            f"cannot resume {part}: the training examples differ from the interrupted run's "
            f"({old.get('num_examples')} then, {request['num_examples']} now, or other contents); "
            "use the same data, or rerun without --resume"
        )
    if old.get("tokenizer_size") != request["tokenizer_size"]:
        raise AdapterMismatchError(
            f"cannot resume {part}: the interrupted run's tokenizer had {old.get('tokenizer_size')} tokens, "
            f"this one {request['tokenizer_size']}"
        )
    if not _same_name(old.get("base"), request["base"]):
        log.warning("resuming a run started on base %r with base %r", old.get("base"), request["base"])
    compare_fingerprints(old.get("base_fingerprint") or {}, model, f"the interrupted run in {part}")


def _init_prefix(peft_model: PeftModel, cfg: WarmstartConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Start a prefix (no projection) at the keys/values the base model computes for real tokens:
    the prefixed model then equals the base model with those tokens prepended."""
    import torch

    from svdecode.streams import output_cache

    n = cfg.num_virtual_tokens
    base = peft_model.get_base_model()
    device = base.get_input_embeddings().weight.device
    if cfg.prefix_init == "text":
        ids = list(tokenizer(cfg.prefix_init_text, add_special_tokens=False).input_ids)
        if not ids:
            raise WarmstartError(f"prefix_init_text {cfg.prefix_init_text!r} tokenises to nothing")
        ids = (ids * math.ceil(n / len(ids)))[:n]
        tokens = torch.tensor([ids], device=device)
    else:  # sample_vocab: random ids below the tokenizer size (the global RNG is seeded)
        tokens = torch.randint(0, min(len(tokenizer), _vocab_size(base)), (1, n)).to(device)
    with torch.no_grad():
        cache = output_cache(base(input_ids=tokens, use_cache=True))
        layers = getattr(cache, "layers", None)
        pairs = [(c.keys, c.values) for c in layers] if layers is not None else [tuple(c) for c in cache]
        kv = torch.stack([t[0] for pair in pairs for t in pair])  # [2L, H, n, D]: k0, v0, k1, v1, ...
        weight = peft_model.prompt_encoder["default"].embedding.weight
        kv = kv.permute(2, 0, 1, 3).reshape(n, -1)  # peft's layout: [n, (2L, H, D)]
        if kv.shape != weight.shape:
            raise WarmstartError(
                f"cannot initialise the prefix from the model's keys/values (shape {tuple(kv.shape)}, prefix "
                f"{tuple(weight.shape)}); use --prefix-init random"
            )
        weight.copy_(kv.to(weight.dtype))


def _training_args(cfg: WarmstartConfig, part: Path, num_examples: int, progress: bool):
    """The Trainer's arguments (built before anything is written: bad values fail early)."""
    import torch
    from transformers import TrainingArguments

    precision = _precision(cfg)
    cuda = torch.cuda.is_available()
    max_steps = _planned_steps(cfg, num_examples)
    try:
        return TrainingArguments(
            output_dir=str(part / CHECKPOINT_DIR),
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr,
            num_train_epochs=cfg.epochs,
            max_steps=max_steps if max_steps is not None else -1,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            logging_strategy="steps",
            logging_steps=cfg.logging_steps,
            logging_first_step=True,
            save_strategy="steps",
            save_steps=cfg.save_steps,
            save_total_limit=cfg.save_total_limit,
            seed=cfg.seed,
            fp16=precision == "fp16",
            bf16=precision == "bf16",
            report_to="none",
            disable_tqdm=not progress,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=0,
            dataloader_pin_memory=cuda,
            use_cpu=not cuda,
        )
    except ValueError as err:
        raise WarmstartError(f"the training options are not accepted by transformers: {err}") from err


def _train(
    examples, out, part, cfg, model, tokenizer, base_name, manifest, scan, request, resume_ckpt, args,
    *, progress, callbacks, keep_checkpoints,
) -> WarmstartResult:  # fmt: skip
    from peft import get_peft_model
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    started = time.time()
    WarmstartTrainer, LossLog = _trainer_classes()
    pcfg = peft_config(cfg)
    if cfg.method == "prompt_tuning" and cfg.prompt_init == "text":
        tokenizer.save_pretrained(part)  # peft loads the init tokenizer by path
        pcfg.tokenizer_name_or_path = str(part)
    set_seed(cfg.seed)
    peft_model = get_peft_model(model, pcfg)
    pc = peft_model.peft_config["default"]
    if cfg.method == "prefix_tuning" and cfg.prefix_init != "random":
        _init_prefix(peft_model, cfg, tokenizer)
    if cfg.method == "prompt_tuning" and cfg.prompt_init == "text":
        pc.tokenizer_name_or_path = str(out)  # the finished folder holds the tokenizer
    trainable, total = peft_model.get_nb_trainable_parameters()

    dataset = LazyExamples(examples, tokenizer, cfg.max_length, cfg.add_eos, scan.kept)
    loss_log = LossLog(part / LOG_NAME)
    trainer = WarmstartTrainer(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(_pad_id(tokenizer)),
        callbacks=[loss_log, *callbacks],
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts on stdout either
    resumed_from = _checkpoint_step(resume_ckpt) if resume_ckpt is not None else None
    if resumed_from is not None:
        log.info("warm-start: resuming from %s (step %d)", resume_ckpt, resumed_from)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_ckpt) if resume_ckpt is not None else None)
    seconds = time.perf_counter() - t0
    peft_model.eval()

    # ---- write the finished run into the partial dir, then rename it into place ----
    # The adapter records the base by the name given (e.g. "default"), not by a local cache path.
    # It is set only now: during training peft's checkpoint saves would look that name up on the
    # hub to see whether the vocabulary changed; embeddings are never trained here.
    pc.base_model_name_or_path = base_name
    peft_model.save_pretrained(str(part), save_embedding_layers=False)
    tokenizer.save_pretrained(str(part))
    if manifest is not None:
        _write_json(part / MANIFEST_NAME, manifest)
    if not keep_checkpoints:
        shutil.rmtree(part / CHECKPOINT_DIR, ignore_errors=True)
    state = trainer.state
    info = {
        "format_version": FORMAT_VERSION,
        "status": "complete",
        "method": cfg.method,
        "config": cfg.to_dict(),
        "peft_config": pc.to_dict(),
        "base": base_name,
        "base_fingerprint": request["base_fingerprint"],
        "vocab_size": request["base_fingerprint"]["vocab_size"],
        "tokenizer_size": len(tokenizer),
        "num_examples_given": len(examples),
        "num_examples": len(scan.kept),
        "dropped_truncated": len(scan.truncated_away),
        "dropped_no_answer": len(scan.no_answer),
        "answer_tokens_cut": scan.cut,
        "answer_tokens_per_epoch": scan.answer_tokens,
        "data_sha256": request["data_sha256"],
        "steps": int(state.global_step),
        "planned_steps": int(state.max_steps),
        "epochs_done": state.epoch,
        "resumed_from_step": resumed_from,
        "final_loss": loss_log.last_loss,
        "mean_loss": float(output.training_loss) if output.training_loss is not None else None,
        "train_seconds": round(seconds, 3),
        "total_seconds": round(time.time() - started, 3),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "precision": _precision(cfg),
        "device": str(args.device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    (part / REQUEST_NAME).unlink(missing_ok=True)
    _write_json(part / INFO_NAME, info)
    _publish(part, out)
    log.info(
        "warm-start: %s adapter written to %s (%d steps, %.1fs)", cfg.method, out, state.global_step, seconds
    )
    return WarmstartResult(
        out_dir=out,
        adapter_dir=out,
        method=cfg.method,
        final_loss=info["final_loss"],
        mean_loss=info["mean_loss"],
        steps=info["steps"],
        seconds=seconds,
        num_examples=len(scan.kept),
        resumed_from_step=resumed_from,
        model=peft_model,
        info=info,
    )


def _publish(part: Path, out: Path) -> None:
    """Rename the finished ``part`` to ``out``, replacing an old finished (or empty) ``out``."""
    old = None
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(part, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reloading


def load_adapter(
    out_dir: str | Path,
    base_model: str | PreTrainedModel | None = None,
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
) -> PeftModel:
    """Reload a warm-started adapter onto its base model, in eval mode.

    ``base_model``: a loaded model (wrapped in place by peft), a name/path for
    :func:`svdecode.models.load_base`, or None for the base recorded with the adapter. The base
    must match the one trained on: same vocabulary size and architecture, same embedding weights
    (from ``warmstart.json``; ``strict=False`` relaxes the weights and name checks, never the
    vocabulary). Plain PEFT adapter folders (no ``warmstart.json``) are accepted with the name and
    vocabulary checks only.
    """
    import torch
    from peft import PeftModel

    out = Path(out_dir)
    if not out.is_dir():
        hint = f" (an unfinished run is in {partial_dir(out)})" if partial_dir(out).is_dir() else ""
        raise WarmstartError(f"adapter directory {str(out)!r} does not exist{hint}")
    if not (out / "adapter_config.json").is_file():
        raise WarmstartError(f"{str(out)!r} holds no adapter_config.json; is it a warm-start output?")
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    info = read_info(out) if (out / INFO_NAME).is_file() else {}
    if info and info.get("status") != "complete":
        raise WarmstartError(f"{str(out)!r} is not a finished warm-start (status {info.get('status')!r})")
    recorded = info.get("base") or adapter_cfg.get("base_model_name_or_path")
    dtype = dtype or torch.float32

    if base_model is None or isinstance(base_model, str):
        from svdecode.models import load_base

        name = base_model or recorded or "default"
        if isinstance(base_model, str) and not _same_name(base_model, recorded) and strict and not info:
            raise AdapterMismatchError(
                f"the adapter in {str(out)!r} was trained on base {recorded!r}, not {base_model!r}; pass the "
                "matching base model, or strict=False if they are the same model under two names"
            )
        model, _ = load_base(name, dtype=dtype)
    else:
        model = base_model
        if isinstance(model, PeftModel):
            raise WarmstartError("base_model already carries a PEFT adapter; pass the plain base model")
        given = _model_name(model)
        if not info and strict and not _same_name(given, recorded):
            raise AdapterMismatchError(
                f"the adapter in {str(out)!r} was trained on base {recorded!r}, the given model is {given!r}; "
                "pass the matching base model, or strict=False if they are the same model under two names"
            )

    vocab = _vocab_size(model)
    fp = info.get("base_fingerprint") or {}
    if fp.get("vocab_size") is not None and fp["vocab_size"] != vocab:
        raise AdapterMismatchError(
            f"vocabulary mismatch: the adapter in {str(out)!r} was trained on a base model with "
            f"{fp['vocab_size']} output tokens, the given base model has {vocab}"
        )
    if info.get("tokenizer_size") and info["tokenizer_size"] > vocab:
        raise AdapterMismatchError(
            f"vocabulary mismatch: the adapter's tokenizer has {info['tokenizer_size']} tokens, the base model "
            f"only {vocab} output rows"
        )
    if fp:
        if strict:
            compare_fingerprints(fp, model, f"the adapter in {str(out)!r}")
        elif not _same_name(_model_name(model), recorded):
            log.warning(
                "loading the adapter in %s onto %r (trained on %r)", out, _model_name(model), recorded
            )
    try:
        peft_model = PeftModel.from_pretrained(model, str(out))
    except (RuntimeError, ValueError, KeyError) as err:
        raise AdapterMismatchError(f"the adapter in {str(out)!r} does not fit the base model: {err}") from err
    peft_model.eval()
    return peft_model


# ---------------------------------------------------------------------------------------------
# Command-line helpers (used by `svdecode warmstart` and `svdecode run`)


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
    if run_flags:
        a("--resume", action="store_true", help="continue an interrupted warm-start from its last checkpoint")
        a("--overwrite", action="store_true", help="replace a finished warm-start in the output directory")


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
        scope = WarmstartConfig.option_scope(name)
        if method in METHODS and method not in scope:
            raise WarmstartError(
                f"{WarmstartConfig.option_flag(name)} applies only to {' / '.join(scope)}, but the method is "
                f"{method}; drop it, or choose --peft {scope[0]}"
            )
    cfg = WarmstartConfig(**given)
    cfg.validate()
    return cfg


__all__ = [
    "METHODS",
    "AdapterMismatchError",
    "LazyExamples",
    "PadCollator",
    "WarmstartConfig",
    "WarmstartError",
    "WarmstartResult",
    "add_warmstart_args",
    "base_fingerprint",
    "check_model",
    "encode_example",
    "is_complete",
    "last_checkpoint",
    "linear_module_names",
    "load_adapter",
    "partial_dir",
    "peft_config",
    "read_info",
    "warmstart",
    "warmstart_config_from_args",
]
