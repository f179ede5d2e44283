"""Shared setup of the evaluation harness's tests (tests/eval/): a tiny steered model, calibration
examples, TruthfulQA MC items and commonsense examples. Test modules import what they use."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer
from peft import LoraConfig, get_peft_model

from svdecode import eval as ev
from svdecode.data import Example, MCItem
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a shared 2-core machine torch's intra-op threads spin against each other: tiny matmuls
    # get ~1000x slower. One thread keeps these tests fast.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_steered(seed: int = 0) -> SteeredModel:
    tok = make_tokenizer()
    peft_model = get_peft_model(
        make_model(len(tok), seed=seed), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # random lora_B: the adapter visibly changes the distribution
                param.add_(torch.randn(param.shape, generator=gen) * 0.5)
    return SteeredModel.from_peft(peft_model.eval(), tok)


CALIB = [
    Example(f"calib/{i}", "boolq", p, a)
    for i, (p, a) in enumerate(
        [
            ("Q: What is the capital of France?\nA:", " Paris is the capital of France."),
            ("Q: The sky is blue?\nA:", " the correct answer is true"),
            ("Q: 1 2 3?\nA:", " 4 5 6 7"),
            (
                "### Instruction: Please answer the following question with true or false. ### Response:",
                " the correct answer is false",
            ),
        ]
    )
]

MC_ITEMS = [
    MCItem(
        "truthfulqa/0",
        "What is the capital of France?",
        ("Paris is the capital of France.", "The sky is blue.", "I have no comment."),
        (1, 0, 0),
        ("Paris is the capital of France.", "Paris.", "The sky is blue.", "I have no comment."),
        (1, 1, 0, 0),
    ),
    MCItem(
        "truthfulqa/1",
        "What colour is the sky?",
        ("The sky is blue.", "answer1", "Paris"),
        (1, 0, 0),
        ("The sky is blue.", "blue", "answer1", "Paris"),
        (1, 1, 0, 0),
    ),
    MCItem(
        "truthfulqa/2",
        "What is 1 2 3?",
        ("4 5 6", "7 8 9"),
        (1, 0),
        ("4 5 6", "7 8 9", "no"),
        (1, 0, 0),
    ),
]

CS_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{q}\n\n### Response:\n"
)
CS_EXAMPLES = [
    Example(
        "boolq/test/0", "boolq", CS_PROMPT.format(q="Is the sky blue?"), "the correct answer is true", "true"
    ),
    Example(
        "boolq/test/1",
        "boolq",
        CS_PROMPT.format(q="Is Paris in Spain?"),
        "the correct answer is false",
        "false",
    ),
    Example(
        "boolq/test/2", "boolq", CS_PROMPT.format(q="Is 7 a number?"), "the correct answer is true", "true"
    ),
    Example(
        "piqa/test/0",
        "piqa",
        CS_PROMPT.format(q="solution1 or solution2?"),
        "the correct answer is solution1",
        "solution1",
    ),
    Example(
        "piqa/test/1", "piqa", CS_PROMPT.format(q="Pick one"), "the correct answer is solution2", "solution2"
    ),
]


def _flat_pairs(items, style):
    prompts, answers, owners = [], [], []
    for it in items:
        for choice in dict.fromkeys((*it.mc1_choices, *it.mc2_choices)):
            prompts.append(ev.mc_prompt(it.question, style))
            answers.append(" " + choice)
            owners.append((it.id, choice))
    return prompts, answers, owners
