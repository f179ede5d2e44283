"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic.

Types are strict (``"5"`` is not a number), unknown fields are refused, and the OpenAI fields this
server does not implement (penalties, logprobs, tools, ...) are accepted only at their neutral
values, so a client never gets silently different behaviour than it asked for. ``mu`` and
``alpha`` are svdecode's own fields (the ``openai`` client sends them with ``extra_body``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from svdecode.checks import strength_problem

MAX_STOPS = 4  # OpenAI's limit
# What the fields checked by validators below take, for the OpenAPI schema (their Python type is
# Any so that a wrong value gets the validator's own message, not pydantic's union errors).
_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
_STOPS = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOPS},
        {"type": "null"},
    ]
}
# The fields this server does not implement: only their neutral values (see _neutral).
_NEUTRAL = Field(None, json_schema_extra={"anyOf": [
    {"type": "null"}, {"const": False}, {"const": 0}, {"type": "object", "maxProperties": 0},
    {"type": "array", "maxItems": 0},
]})  # fmt: skip
_PART = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
    "required": ["type", "text"],
    "additionalProperties": False,
}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": _PART}]}


def _neutral(value: Any) -> bool:
    """None, False, 0, {} or []: what a client sends for a feature it does not use."""
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return value == {} or value == []


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    stop: Any = Field(None, validate_default=True, json_schema_extra=_STOPS)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # an end-user id for the caller's logs; not used here
    mu: float | None = Field(None, allow_inf_nan=False)
    alpha: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    # OpenAI fields without an implementation here: only their neutral values are accepted.
    frequency_penalty: Any = _NEUTRAL
    presence_penalty: Any = _NEUTRAL
    logit_bias: Any = _NEUTRAL
    logprobs: Any = _NEUTRAL

    UNIMPLEMENTED: ClassVar[tuple[str, ...]] = (
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "logprobs",
    )

    @field_validator("mu")
    @classmethod
    def _strength(cls, value: float | None) -> float | None:
        problem = None if value is None else strength_problem(value)
        if problem:  # e.g. 1e300: finite, but inf in the fp32 steering math
            raise ValueError(problem)
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, value: Any) -> tuple[str, ...]:
        stops = [value] if isinstance(value, str) else [] if value is None else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        if len(stops) > MAX_STOPS:
            raise ValueError(f"stop takes at most {MAX_STOPS} strings, got {len(stops)}")
        return tuple(stops)

    def unimplemented(self) -> str | None:
        """The first field set to a value this server cannot honour, if any."""
        return next((name for name in self.UNIMPLEMENTED if not _neutral(getattr(self, name))), None)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: Any = Field(json_schema_extra=_TEXTS)
    echo: Any = _NEUTRAL
    best_of: Any = Field(None, json_schema_extra={"anyOf": [{"type": "null"}, {"const": 1}]})
    suffix: Any = _NEUTRAL

    UNIMPLEMENTED = (*_Sampling.UNIMPLEMENTED, "echo", "suffix")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            return value
        if isinstance(value, list) and value and all(isinstance(p, (int, list)) for p in value):
            raise ValueError("token-id prompts are not supported; send the prompt as text")
        raise ValueError("prompt must be a string or a non-empty list of strings")

    def unimplemented(self) -> str | None:
        if self.best_of not in (None, 1) or isinstance(self.best_of, bool):
            return "best_of"
        return super().unimplemented()


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = Field(json_schema_extra=_CONTENT)
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            parts = [TextPart.model_validate(p) if isinstance(p, dict) else p for p in value]
            if all(isinstance(p, TextPart) for p in parts):
                return "".join(p.text for p in parts)
        raise ValueError('content must be a string or a list of {"type": "text", "text": ...} parts')


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    top_logprobs: Any = _NEUTRAL
    tools: Any = _NEUTRAL
    tool_choice: Any = Field(None, json_schema_extra={"anyOf": [{"type": "null"}, {"const": "none"}]})
    functions: Any = _NEUTRAL
    function_call: Any = _NEUTRAL
    response_format: Any = Field(
        None,
        json_schema_extra={"anyOf": [{"type": "null"}, {"type": "object", "properties": {"type": {"const": "text"}},
                                                        "required": ["type"], "additionalProperties": False}]},
    )  # fmt: skip
    parallel_tool_calls: bool | None = None

    UNIMPLEMENTED = (
        *_Sampling.UNIMPLEMENTED,
        "top_logprobs",
        "tools",
        "functions",
        "function_call",
    )

    def unimplemented(self) -> str | None:
        if self.tool_choice not in (None, "none"):
            return "tool_choice"
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return super().unimplemented()

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat(self) -> list[dict[str, str]]:
        """The messages as the tokenizer's chat template takes them ("developer" is OpenAI's new
        name for "system", which templates know)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.content}
            for m in self.messages
        ]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict"}


def describe_validation_error(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """(message, param) for the first pydantic/FastAPI validation error, in words a client can act on."""
    err = errors[0]
    parts = [
        str(p)
        for p in err.get("loc", ())
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS))
    ]
    param = ".".join(parts) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail})", None
    if not parts and kind in ("model_attributes_type", "dict_type", "model_type", "missing"):
        return "the request body must be a JSON object", None
    if kind == "extra_forbidden":
        return f"unknown field '{param}': this server does not implement it", param
    if kind == "missing":
        return f"missing required field '{param}'", param
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"invalid '{param}': {msg} (got {got})", param
