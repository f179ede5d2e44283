"""Teacher-forced batches of (prompt, answer) pairs: the shared input of scoring and calibration."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class PairBatch:
    """Left-padded ``prompt + answer`` token ids, with the answer targets at the right end.

    Left padding puts every answer at the end of its row, so the logits that predict answer
    tokens are the last ``keep - 1`` positions (``keep = longest answer + 1``): a forward pass
    with ``logits_to_keep=keep`` never materialises [B, T, V] logits for long prompts.
    """

    input_ids: torch.LongTensor  # [B, T]
    attention_mask: torch.LongTensor  # [B, T]
    answer_lengths: list[int]

    @property
    def keep(self) -> int:
        return max(self.answer_lengths) + 1

    @property
    def targets(self) -> torch.LongTensor:
        """[B, keep - 1]: the tokens that logits[:, :-1] (of the kept positions) predict."""
        return self.input_ids[:, -(self.keep - 1) :]

    @property
    def answer_mask(self) -> torch.BoolTensor:
        """[B, keep - 1]: True where the target is an answer token."""
        width = self.keep - 1
        cols = torch.arange(width).unsqueeze(0)
        return cols >= (width - torch.tensor(self.answer_lengths).unsqueeze(1))


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    max_length: int | None = None,
) -> PairBatch:
    """Tokenise prompt and answer separately (the answer's tokens are exactly those scored) and
    left-pad. ``max_length`` truncates prompts from the left; answers are never truncated."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        raise ValueError("no (prompt, answer) pairs given")
    rows, lengths = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        p_ids = tokenizer(prompt, add_special_tokens=True).input_ids
        a_ids = tokenizer(answer, add_special_tokens=False).input_ids
        if not a_ids:
            raise ValueError(f"pair {i}: the answer {answer!r} tokenises to nothing; nothing to score")
        if not p_ids:
            raise ValueError(
                f"pair {i}: the prompt is empty and the tokenizer adds no BOS token; the first answer token has no context"
            )
        if max_length is not None:
            if len(a_ids) >= max_length:
                raise ValueError(
                    f"pair {i}: the answer alone has {len(a_ids)} tokens, max_length is {max_length}"
                )
            p_ids = p_ids[-(max_length - len(a_ids)) :]
        rows.append(p_ids + a_ids)
        lengths.append(len(a_ids))
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return PairBatch(ids, mask, lengths)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def split_pairs(pairs: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Prompts and answers from ``(prompt, answer)`` tuples or objects with ``.prompt``/``.answer``."""
    prompts, answers = [], []
    for i, pair in enumerate(pairs):
        if hasattr(pair, "prompt") and hasattr(pair, "answer"):
            prompts.append(pair.prompt)
            answers.append(pair.answer)
        elif isinstance(pair, (tuple, list)) and len(pair) == 2:
            prompts.append(pair[0])
            answers.append(pair[1])
        else:
            raise ValueError(
                f"calibration pair {i} is neither (prompt, answer) nor an object with .prompt/.answer"
            )
    return prompts, answers
