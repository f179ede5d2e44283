"""Batched generation for the evaluated methods: steered methods through ``SteeredModel.generate``,
the plain baselines through the PEFT model, with per-batch seeds so a resumed run samples alike.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from svdecode.errors import InputError
from svdecode.eval.methods import GREEDY, MethodSpec
from svdecode.model.scoring import batches

log = logging.getLogger("svdecode")


def _plain_generator(model, which: str) -> tuple[Callable[..., torch.Tensor], Callable[[], Any]]:
    """(generate function, context manager factory) for the unsteered adapted or base model."""
    streams = model.streams
    if hasattr(streams, "peft_model"):
        peft_model = streams.peft_model
        if which == "adapted":
            return peft_model.generate, contextlib.nullcontext
        if getattr(peft_model.active_peft_config, "is_prompt_learning", False):
            return peft_model.get_base_model().generate, contextlib.nullcontext
        return peft_model.generate, peft_model.disable_adapter
    if hasattr(streams, "adapted") and hasattr(streams, "base"):
        target = streams.adapted if which == "adapted" else streams.base
        return target.generate, contextlib.nullcontext
    raise TypeError(f"cannot find the plain models inside streams of kind {getattr(streams, 'kind', '?')}")


def _is_prompt_learning(model) -> bool:
    peft_model = getattr(model.streams, "peft_model", None)
    return bool(getattr(getattr(peft_model, "active_peft_config", None), "is_prompt_learning", False))


def _batch_seed(seed: int, name: str, first_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{name}\x00{first_id}".encode())) % (2**31)


def _check_context(model, prompts: Sequence[str], ids: Sequence[str], max_new_tokens: int, desc: str) -> None:
    """Refuse prompts that, with ``max_new_tokens``, do not fit the model's positions (before any
    batch runs, for the plain methods too: running past them gives silently degraded text)."""
    room = model.context_room()
    if room is None or not prompts:
        return
    lengths = [len(x) for x in model.tokenizer(list(prompts)).input_ids]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[i] + max_new_tokens > room:
        raise InputError(
            f"{desc}: item {ids[i]} has a {lengths[i]}-token prompt; with max_new_tokens={max_new_tokens} it "
            f"exceeds the model's context of {room} tokens; lower max_new_tokens or use a longer-context model"
        )


def generate_batches(
    model,
    spec: MethodSpec,
    prompts: Sequence[str],
    ids: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
    desc: str,
    stop_strings: Sequence[str] | None = None,
    seed: int = 0,
) -> Iterator[tuple[slice, list[str]]]:
    """Generate for ``prompts`` with ``spec`` batch by batch; yields (slice, texts) as they finish.

    Steered methods run ``SteeredModel.generate`` with the method's steerer; "base"/"peft" run the
    plain PEFT model (base with the adapter disabled). Sampling is seeded per batch from
    (seed, method, first item id), so a resumed run samples its remaining batches reproducibly.
    """
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer")
    _check_context(model, prompts, ids, max_new_tokens, desc)
    tok.padding_side = "left"
    decoding = dict(spec.decoding or GREEDY)
    dec_seed = decoding.pop("seed", seed)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, **decoding)
    kwargs["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if stop_strings:
        kwargs.update(stop_strings=list(stop_strings), tokenizer=tok)
    if spec.steered or (spec.method == "adapted" and _is_prompt_learning(model)):
        # peft 0.21's generate() for prompt learning is wrong on transformers >= 5.24 (it looks for
        # the cache under `past_key_values` and re-prepends the virtual tokens every step); our
        # streams give the adapted logits exactly.
        gen_fn, ctx = functools.partial(model.generate, steering=spec.steerer()), contextlib.nullcontext
    else:
        gen_fn, ctx = _plain_generator(model, spec.method)
    device = model.device
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress)
    for sl in batches(len(prompts), batch_size):
        enc = tok(list(prompts[sl]), return_tensors="pt", padding=True).to(device)
        if kwargs.get("do_sample"):
            torch.manual_seed(_batch_seed(dec_seed, spec.name, ids[sl.start]))
        with torch.no_grad(), ctx():
            out = gen_fn(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kwargs)
        texts = tok.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        bar.update(sl.stop - sl.start)
        yield sl, texts
    bar.close()
