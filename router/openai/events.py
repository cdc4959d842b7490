"""What the output parsers produce from the model's text: content, reasoning and tool-call pieces.

Streaming sends the events as deltas; a non-streaming answer is the same events folded together,
so both paths parse alike."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Content:
    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    index: int
    text: str  # the next piece of the arguments' JSON text


Event = Content | Reasoning | ToolCallStart | ToolCallArguments


@dataclass(slots=True)
class FoldedCall:
    call_id: str
    name: str
    arguments: str = ""


@dataclass(slots=True)
class Folded:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[FoldedCall] = field(default_factory=list)


def fold(events: list[Event]) -> Folded:
    """All events of one answer joined: the non-streaming message."""
    result = Folded()
    for event in events:
        if isinstance(event, Content):
            result.content += event.text
        elif isinstance(event, Reasoning):
            result.reasoning += event.text
        elif isinstance(event, ToolCallStart):
            result.tool_calls.append(FoldedCall(event.call_id, event.name))
        else:
            result.tool_calls[event.index].arguments += event.text
    return result


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag` (held back while
    the tag may still be arriving)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
