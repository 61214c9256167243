"""The records of an input file: one JSON object per line, in one of four shapes.

| shape    | content field(s)                     | default strategy when too long |
| prompt   | `prompt`                             | truncate                       |
| chat     | `messages`                           | window                         |
| raw      | `inputs` (sent to TGI as is)         | reject                         |
| document | `instruction` + `document` (+system) | map_reduce                     |

Every shape also takes `id`, `parameters` (TGI generation parameters over the job's) and `fit` (how to handle
a record too long for the context, over the job's). These models are also what `fitting` works on.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic_core import PydanticCustomError

from sagebatch.domain.parameters import Parameters
from sagebatch.domain.prompt import Message


class Strategy(str, Enum):
    TRUNCATE = "truncate"
    SPLIT = "split"
    MAP_REDUCE = "map_reduce"
    WINDOW = "window"
    REJECT = "reject"


class FitSettings(BaseModel):
    """How to handle a record too long for the context (see docs/fitting.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy | None = None  # None: the record shape's default (fitting.default_strategy)
    keep: Literal["head", "tail"] = "head"
    # Below a few dozen tokens a chunk is not meaningful text, only many calls.
    chunk_tokens: StrictInt | None = Field(None, ge=32)
    overlap_tokens: StrictInt = Field(64, ge=0)
    # The smallest max_new_tokens worth sending for a chunk or a truncated prompt.
    min_new_tokens: StrictInt = Field(16, ge=1)


def _not_blank(value: str, what: str) -> str:
    # A whitespace-only text would be billed for an answer to nothing: refuse it before any call.
    if not value.strip():
        raise PydanticCustomError("empty_text", "{what} is empty", {"what": what})
    return value


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | StrictInt | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    fit: FitSettings | None = None


class PromptRecord(_RecordBase):
    """A single user prompt, rendered with the instruct template."""

    kind: ClassVar[str] = "prompt"
    prompt: StrictStr

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return _not_blank(value, "prompt")


class ChatRecord(_RecordBase):
    """A conversation ending with a user turn."""

    kind: ClassVar[str] = "chat"
    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[Message]) -> list[Message]:
        for index, message in enumerate(value):
            _not_blank(message.content, f"message {index} ({message.role})")
        return value


class RawRecord(_RecordBase):
    """`inputs` is sent to TGI as is: the caller owns the template."""

    kind: ClassVar[str] = "raw"

    inputs: StrictStr

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: str) -> str:
        return _not_blank(value, "inputs")


class DocumentRecord(_RecordBase):
    """An instruction to repeat and a document to chunk when it does not fit."""

    kind: ClassVar[str] = "document"

    instruction: StrictStr
    document: StrictStr
    system: StrictStr | None = None

    @field_validator("instruction", "document")
    @classmethod
    def _texts(cls, value: str, info: Any) -> str:
        return _not_blank(value, info.field_name)


InputRecord = PromptRecord | ChatRecord | RawRecord | DocumentRecord
_SHAPES: list[tuple[str, type[_RecordBase]]] = [
    ("prompt", PromptRecord),
    ("messages", ChatRecord),
    ("inputs", RawRecord),
    ("document", DocumentRecord),
]


def parse_record(data: Any) -> InputRecord:
    """Pick the record shape by its content field, then validate strictly (clear errors, no guessing)."""
    if not isinstance(data, dict):
        raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
    present = [name for name, _ in _SHAPES if name in data]
    if len(present) != 1:
        raise ValueError(
            "a record needs exactly one of 'prompt', 'messages', 'inputs' or 'document' (with 'instruction'); "
            f"found {present or 'none'}"
        )
    model = dict(_SHAPES)[present[0]]
    record: InputRecord = model.model_validate(data)  # type: ignore[assignment]  # the shapes are the union's members
    return record
