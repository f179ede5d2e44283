"""OpenAI response objects (completion, chat.completion and their stream chunks) built from the
engine's events for one request."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from svdecode.integrations.server.engine import GenRequest


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Reply:
    """Accumulates one request's events into OpenAI completion / chat.completion objects."""

    def __init__(self, model: str, gen: GenRequest, chat: bool):
        self.model, self.gen, self.chat = model, gen, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.texts = [""] * gen.n_rows
        self.finish: dict[int, str] = {}
        self.tokens = [0] * gen.n_rows
        self.failed = False

    def complete(self) -> bool:
        return len(self.finish) == len(self.texts)

    def add(self, event: tuple) -> str | None:
        """Record an engine event; returns "timeout"/"error" when the request cannot succeed."""
        if event[0] == "delta":
            self.texts[event[1]] += event[2]
        elif event[0] == "done":
            _, index, reason, n_tokens = event
            self.finish[index] = "length" if reason == "length" else "stop"
            self.tokens[index] = n_tokens
            if reason in ("timeout", "error"):
                self.failed = True
                return reason
        elif event[0] == "error":
            self.failed = True
            return "error"
        return None

    def usage(self) -> dict[str, int]:
        prompt = sum(len(p) for p in self.gen.prompts)
        completion = sum(self.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def final(self) -> dict[str, Any]:
        choices = []
        for i, text in enumerate(self.texts):
            choice: dict[str, Any] = {"index": i, "finish_reason": self.finish[i], "logprobs": None}
            choice.update(
                {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
            )
            choices.append(choice)
        return {**self._head(False), "choices": choices, "usage": self.usage()}

    def _choice(self, index: int, text: str | None, finish: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

    def opening(self) -> list[dict[str, Any]]:
        """Chat streams open each choice with the assistant role, as OpenAI's do."""
        if not self.chat:
            return []
        return [
            {
                **self._head(True),
                "choices": [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                        "logprobs": None,
                    }
                ],
            }
            for i in range(len(self.texts))
        ]

    def chunk(self, event: tuple) -> dict[str, Any] | None:
        if event[0] == "delta":
            return {**self._head(True), "choices": [self._choice(event[1], event[2], None)]}
        if event[0] == "done":
            return {**self._head(True), "choices": [self._choice(event[1], None, self.finish[event[1]])]}
        return None

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": self.usage()}
