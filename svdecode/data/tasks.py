"""Task specs as the CLI takes them (``commonsense:boolq``, ``truthfulqa``, a file, ``hub:NAME``)
and chat-template prompt formatting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from svdecode.data.commonsense import load_commonsense
from svdecode.data.examples import DataError, ExampleList
from svdecode.data.files import load_hub, load_table
from svdecode.data.truthfulqa import load_truthfulqa_generation

log = logging.getLogger("svdecode")

_warned_no_template: set[str] = set()


def format_prompt(tokenizer: Any, prompt: str, chat: bool) -> str:
    """``prompt`` as a user turn in the tokenizer's chat template with the assistant turn opened
    (``chat=True``), else unchanged; a tokenizer without a template gets the plain prompt."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if name not in _warned_no_template:
            _warned_no_template.add(name)
            log.warning("tokenizer %s has no chat template: using plain prompts", name)
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def load_task(
    spec: str,
    split: str = "train",
    prompt_col: str = "prompt",
    answer_col: str = "answer",
    skip_bad_rows: bool = False,
) -> ExampleList:
    """Examples from a task spec, as the CLI takes it:

    ``commonsense:boolq,piqa`` / ``commonsense:all`` (LLM-Adapters format, ``split`` train|test),
    ``truthfulqa`` (generation examples), a ``.jsonl``/``.json``/``.csv`` path with
    ``prompt_col``/``answer_col``, or ``hub:NAME`` (through ``datasets``, split ``split``).
    """
    if spec.startswith("commonsense:"):
        return load_commonsense(spec.split(":", 1)[1], split, skip_bad_rows=skip_bad_rows)
    if spec == "truthfulqa":
        return load_truthfulqa_generation(skip_bad_rows=skip_bad_rows)
    if spec.startswith("hub:"):
        return load_hub(spec[4:], split, prompt_col, answer_col, skip_bad_rows=skip_bad_rows)
    if Path(spec).suffix.lower() in (".jsonl", ".json", ".csv"):
        if not Path(spec).is_file():
            raise DataError(f"data file {spec!r} does not exist")
        return load_table(spec, prompt_col, answer_col, skip_bad_rows=skip_bad_rows)
    raise DataError(
        f"unknown task spec {spec!r}: use commonsense:<datasets|all>, truthfulqa, a .jsonl/.json/.csv file, or hub:<name>"
    )
