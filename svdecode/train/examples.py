"""Tokenisation for training: answer-only labels, a lazy map-style dataset, a padding collator, and a
length scan that drops (and counts) examples with no answer token inside ``max_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdecode.train.config import (
    WarmstartConfig,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from svdecode.data import Example

log = logging.getLogger("svdecode")


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


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@dataclass
class LengthScan:
    kept: list[int]
    no_answer: list[str]  # ids of examples whose answer tokenises to nothing
    truncated_away: list[str]  # ids of examples whose prompt fills max_length
    answer_tokens: int  # answer tokens trained on per epoch (after truncation)
    cut: int  # kept examples that lose some answer tokens to max_length
    longest: int = 0  # the longest kept example in tokens, after truncation


def scan_examples(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, cfg: WarmstartConfig, chunk: int = 1024
) -> LengthScan:
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
    return LengthScan(kept, no_answer, gone, tokens, cut, longest)
