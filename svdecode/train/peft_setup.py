"""Per-method setup: the peft config of each warm-start method (LoRA, IA3, Prompt Tuning, P-Tuning,
Prefix Tuning), the model-dependent checks (target modules, vocabulary, precision), and the prefix
initialisation from real keys/values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from svdecode.train.config import (
    WarmstartConfig,
    WarmstartError,
    option_flag,
    validate,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedTokenizerBase


log = logging.getLogger("svdecode")


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
            f"target module(s) {missing} ({option_flag(option)}) match no Linear module of "
            f"the model ({type(model).__name__}); its Linear modules are named: "
            f"{', '.join(linear_module_names(model))}"
        )


def check_model(
    cfg: WarmstartConfig, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Check that the config fits this model (and tokenizer); raise :class:`WarmstartError`."""
    from peft import PeftModel

    from svdecode.model.loading import vocab_size  # lazy: keeps the CLI parser light

    validate(cfg)
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
        v_model = vocab_size(model)
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
    precision = precision_of(cfg)
    if precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            raise WarmstartError("precision fp16 (--precision) needs a CUDA GPU; use fp32 (or auto)")


def precision_of(cfg: WarmstartConfig) -> str:
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
        validate(cfg)
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


def init_prefix(peft_model: PeftModel, cfg: WarmstartConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Start a prefix (no projection) at the keys/values the base model computes for real tokens:
    the prefixed model then equals the base model with those tokens prepended."""
    import torch

    from svdecode.model.loading import vocab_size  # lazy: keeps the CLI parser light
    from svdecode.model.streams import output_cache

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
        tokens = torch.randint(0, min(len(tokenizer), vocab_size(base)), (1, n)).to(device)
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
