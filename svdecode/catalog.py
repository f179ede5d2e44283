"""The benchmark catalogue svdecode evaluates on, as plain data defined once: the evaluation task families'
names, and the commonsense datasets with their label sets. No imports, so every layer -- the
harness, the command line and the lm-eval integration -- reads these same definitions."""

from __future__ import annotations

# The evaluation task families (their behaviour: svdecode.eval.tasks.TASKS).
TRUTHFULQA_MC = "truthfulqa_mc"
TRUTHFULQA_GEN = "truthfulqa_gen"
COMMONSENSE = "commonsense"
TASK_NAMES: tuple[str, ...] = (TRUTHFULQA_MC, COMMONSENSE, TRUTHFULQA_GEN)

# The LLM-Adapters commonsense benchmarks, each in <data>/commonsense/<name>/.
COMMONSENSE_DIR = COMMONSENSE
COMMONSENSE_DATASETS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Easy",
    "ARC-Challenge",
    "openbookqa",
)

_ANSWERS4 = ("answer1", "answer2", "answer3", "answer4")

# The labels a commonsense answer names ("the correct answer is <label>").
LABELS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": ("solution1", "solution2"),
    "social_i_qa": ("answer1", "answer2", "answer3"),
    "hellaswag": ("ending1", "ending2", "ending3", "ending4"),
    "winogrande": ("option1", "option2"),
    "ARC-Easy": (*_ANSWERS4, "answer5"),  # a few ARC-Easy questions have five choices (train and test)
    "ARC-Challenge": _ANSWERS4,
    "openbookqa": _ANSWERS4,
}
