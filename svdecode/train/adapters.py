"""Reloading a warm-started adapter onto its base model: the warm-start's own checks (an unfinished
run, a failed one, the tokenizer's size, the base's name) in its error types, then the one adapter
loader, :func:`svdecode.model.loading.load_peft` (vocabulary, architecture and embedding-weights
fingerprint; peft's loading).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from svdecode.train.base_checks import model_name, same_model_name
from svdecode.train.checkpoints import INFO_NAME, partial_dir, read_info
from svdecode.train.config import (
    AdapterMismatchError,
    WarmstartError,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel


log = logging.getLogger("svdecode")


def load_adapter(
    out_dir: str | Path,
    base_model: str | PreTrainedModel | None = None,
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
) -> PeftModel:
    """Reload a warm-started adapter onto its base model, in eval mode.

    ``base_model``: a loaded model (wrapped in place by peft), a name/path for
    :func:`svdecode.model.loading.load_base`, or None for the base recorded with the adapter. The base
    must match the one trained on: same vocabulary size and architecture, same embedding weights
    (from ``warmstart.json``; ``strict=False`` relaxes the weights and name checks, never the
    vocabulary). Plain PEFT adapter folders (no ``warmstart.json``) are accepted with the name and
    vocabulary checks only.
    """
    import torch
    from peft import PeftModel

    from svdecode.model.loading import vocab_size  # lazy: keeps the CLI parser light

    out = Path(out_dir)
    if not out.is_dir():
        hint = f" (an unfinished run is in {partial_dir(out)})" if partial_dir(out).is_dir() else ""
        raise WarmstartError(f"adapter directory {str(out)!r} does not exist{hint}")
    if not (out / "adapter_config.json").is_file():
        raise WarmstartError(f"{str(out)!r} holds no adapter_config.json; is it a warm-start output?")
    from svdecode.model.loading import ModelLoadError, read_adapter_config

    try:
        adapter_cfg = read_adapter_config(out)
    except ModelLoadError as err:
        raise WarmstartError(str(err)) from err
    info = read_info(out) if (out / INFO_NAME).is_file() else {}
    if info and info.get("status") != "complete":
        raise WarmstartError(f"{str(out)!r} is not a finished warm-start (status {info.get('status')!r})")
    recorded = info.get("base") or adapter_cfg.get("base_model_name_or_path")
    dtype = dtype or torch.float32

    if base_model is None or isinstance(base_model, str):
        from svdecode.model.loading import load_base

        name = base_model or recorded or "default"
        if isinstance(base_model, str) and not same_model_name(base_model, recorded) and strict and not info:
            raise AdapterMismatchError(
                f"the adapter in {str(out)!r} was trained on base {recorded!r}, not {base_model!r}; pass the "
                "matching base model, or strict=False if they are the same model under two names"
            )
        model, _ = load_base(name, dtype=dtype)
    else:
        model = base_model
        if isinstance(model, PeftModel):
            raise WarmstartError("base_model already carries a PEFT adapter; pass the plain base model")
        given = model_name(model)
        if not info and strict and not same_model_name(given, recorded):
            raise AdapterMismatchError(
                f"the adapter in {str(out)!r} was trained on base {recorded!r}, the given model is {given!r}; "
                "pass the matching base model, or strict=False if they are the same model under two names"
            )

    vocab = vocab_size(model)
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
    if fp and not strict and not same_model_name(model_name(model), recorded):
        log.warning("loading the adapter in %s onto %r (trained on %r)", out, model_name(model), recorded)
    # the one adapter loader (fingerprint check, peft loading, its errors), in the warm-start's error types
    from svdecode.model.fingerprint import BaseMismatchError
    from svdecode.model.loading import load_peft

    try:
        return load_peft(out, model, force=not strict)
    except BaseMismatchError as err:
        raise AdapterMismatchError(str(err)) from err
    except ModelLoadError as err:
        raise WarmstartError(str(err)) from err
