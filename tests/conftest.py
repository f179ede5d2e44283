"""Shared fixtures: tiny random-weight models and a tiny tokenizer, built offline in-process."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from hypothesis import HealthCheck, settings
from peft import (
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Property tests and fuzzing (test_fuzz_*.py): CI's default run is small and reproducible; `deep`
# (scripts/fuzz.sh) tries many more examples. HYPOTHESIS_PROFILE picks one; FUZZ_EXAMPLES overrides.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=_QUIET
)
settings.register_profile("deep", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), deadline=None,
                          suppress_health_check=_QUIET)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the thread
# hand-offs cost milliseconds per operation.
torch.set_num_threads(1)

# the row counts of ../shared/data's test splits (PROVENANCE.md), which two loaders must both read
TEST_ROWS = {
    "boolq": 3270,
    "piqa": 64,
    "social_i_qa": 1954,
    "hellaswag": 64,
    "winogrande": 1267,
    "ARC-Easy": 2376,
    "ARC-Challenge": 1172,
    "openbookqa": 500,
}
TRUTHFULQA_ROWS = 817

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: Please answer the following question with true or false. ### Response:",
    "the correct answer is true",
    "the correct answer is false",
    "answer1 answer2 answer3 answer4 answer5",
    "solution1 solution2 option1 option2 ending1 ending2 ending3 ending4",
    "What is the capital of France? Paris is the capital of France. The sky is blue.",
    "Q: A: yes no I have no comment. 0 1 2 3 4 5 6 7 8 9",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (vocab ~ 320) trained on a few lines, with pad/eos/bos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def make_model(
    vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, max_positions: int = 256
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    # Random init gives near-uniform outputs; sharpen them so greedy/beam paths are well separated.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


# one of each adapter kind the streams support (tests/model/, tests/calibration/)
PEFT_CONFIGS = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "ia3": lambda: IA3Config(
        target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
    ),
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    "p_tuning": lambda: PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, encoder_hidden_size=16
    ),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
}


def make_peft(kind: str, vocab: int, seed: int = 0):
    """A tiny PEFT model whose adapter visibly changes the distribution (random adapter weights)."""
    model = get_peft_model(make_model(vocab, seed=seed), PEFT_CONFIGS[kind]())
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_B", "ia3_l", "prompt_encoder")):
                param.add_(torch.randn(param.shape, generator=gen) * (0.5 if "ia3" not in name else 0.3))
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer) -> LlamaForCausalLM:
    return make_model(len(tokenizer))


# a tiny base model folder and a 14-row prompt/answer file, for the command-line tests
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("base")
    make_model(len(tokenizer), max_positions=1024).save_pretrained(path)  # TruthfulQA prompts: ~520 tokens
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "task.jsonl"
    rows = [{"prompt": f"Q: is {i} even?\nA:", "answer": " yes" if i % 2 == 0 else " no"} for i in range(14)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
