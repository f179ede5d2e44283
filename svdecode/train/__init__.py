"""Step 1 of SVDecode, the warm-start: a short PEFT fine-tune of the base model on the task.

``warmstart(examples, out_dir, cfg)`` trains one adapter (LoRA, IA3, Prompt Tuning, P-Tuning or
Prefix Tuning) with the paper's settings (Table 7) and writes it to ``out_dir``:

* ``adapter_config.json`` + ``adapter_model.safetensors`` (``PeftModel.save_pretrained``),
* the tokenizer, ``split_manifest.json`` (when a manifest is given), ``train_log.jsonl`` (one JSON
  object per logged step: step, epoch, loss, lr, grad_norm) and ``warmstart.json`` (config,
  timings, losses, counts, base-model fingerprint, library versions).

Everything is validated before training starts, so a bad option never costs a training run and
never creates a directory. The loss is on answer tokens only: prompt and padding positions carry
label -100; prompt and answer are tokenised separately, as :func:`svdecode.model.scoring.encode_pairs`
tokenises them for scoring.

Where things are: ``config`` (the options), ``peft_setup`` (one peft config per method, model
checks), ``examples`` (tokenisation), ``trainer`` (the ``Trainer`` run), ``checkpoints`` (the
output directory, resume), ``adapters`` (reloading with base checks), ``args`` (CLI options),
``pipeline`` (``svdecode run``: warm-start -> calibrate).

Layer: harness. May import the core (``svdecode.model``, ``calibration``, ``runs``, ...) and
``svdecode.data``, never ``cli/`` or ``integrations/``; torch, transformers and peft are imported inside functions so the CLI can build
its parser without them. Nothing in the core imports this package.
"""

from svdecode.model.fingerprint import base_fingerprint
from svdecode.train.adapters import load_adapter
from svdecode.train.args import add_warmstart_args, trainer_args_from_args, warmstart_config_from_args
from svdecode.train.checkpoints import (
    INFO_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    is_complete,
    last_checkpoint,
    partial_dir,
    read_info,
)
from svdecode.train.config import (
    METHODS,
    AdapterMismatchError,
    WarmstartConfig,
    WarmstartError,
    option_flag,
    option_scope,
    validate,
)
from svdecode.train.examples import LazyExamples, PadCollator, encode_example
from svdecode.train.peft_setup import check_model, linear_module_names, peft_config
from svdecode.train.trainer import WarmstartResult, warmstart

__all__ = [
    "INFO_NAME",
    "LOG_NAME",
    "MANIFEST_NAME",
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
    "option_flag",
    "option_scope",
    "partial_dir",
    "peft_config",
    "read_info",
    "validate",
    "warmstart",
    "trainer_args_from_args",
    "warmstart_config_from_args",
]
