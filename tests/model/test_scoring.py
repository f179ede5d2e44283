"""svdecode.model.scoring: teacher-forced (prompt, answer) batches, left-padded with the answers at
the right end."""

from __future__ import annotations

import pytest

from svdecode.data import Example
from svdecode.model.scoring import batches, encode_pairs, split_pairs


def test_pairs_are_left_padded_and_the_targets_are_exactly_the_answer_tokens(tokenizer):
    prompts, answers = ["What is the capital of France?", "Q:"], [" Paris", " the correct answer is true"]
    batch = encode_pairs(tokenizer, prompts, answers)
    a_ids = [tokenizer(a, add_special_tokens=False).input_ids for a in answers]
    p_ids = [tokenizer(p).input_ids for p in prompts]
    assert batch.answer_lengths == [len(a) for a in a_ids] and batch.keep == max(map(len, a_ids)) + 1
    width = max(len(p) + len(a) for p, a in zip(p_ids, a_ids, strict=True))
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, width)
    for i in range(2):
        n = len(p_ids[i]) + len(a_ids[i])
        assert batch.attention_mask[i].tolist() == [0] * (width - n) + [1] * n
        assert batch.input_ids[i, width - n :].tolist() == p_ids[i] + a_ids[i]
        # the answer mask marks the last len(answer) targets of the row, which are the answer's tokens
        targets = batch.targets[i][batch.answer_mask[i]].tolist()
        assert targets == a_ids[i]


def test_max_length_truncates_prompts_from_the_left_never_answers(tokenizer):
    p_ids = tokenizer("What is the capital of France? Paris is").input_ids
    a_ids = tokenizer(" true", add_special_tokens=False).input_ids
    batch = encode_pairs(tokenizer, ["What is the capital of France? Paris is"], [" true"], max_length=4)
    assert batch.input_ids[0].tolist() == (p_ids + a_ids)[-4:]
    with pytest.raises(ValueError, match="the answer alone has"):
        encode_pairs(tokenizer, ["Q"], [" the correct answer is true"], max_length=2)


def test_bad_pairs_are_refused_with_their_index(tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        encode_pairs(tokenizer, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no \\(prompt, answer\\) pairs"):
        encode_pairs(tokenizer, [], [])
    with pytest.raises(ValueError, match="pair 1: the answer '' tokenises to nothing"):
        encode_pairs(tokenizer, ["a", "b"], [" c", ""])


def test_batches_cover_every_index_once():
    assert list(batches(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(batches(0, 3)) == []
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(batches(3, 0))


def test_split_pairs_takes_tuples_and_examples():
    ex = Example("x/0", "x", "Q?", " A")
    assert split_pairs([("p", "a"), ex]) == (["p", "Q?"], ["a", " A"])
    with pytest.raises(ValueError, match="calibration pair 0 is neither"):
        split_pairs(["just a string"])
