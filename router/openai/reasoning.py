"""Splits `<think>…</think>` off the model's output as `reasoning_content`, streaming.

Two starts: the model opens `<think>` itself, or the chat template already opened it (Qwen3.5 with
thinking on ends the prompt in `<think>\n`), so the output starts inside the thinking and only
`</think>` marks its end. With thinking off the template closes an empty block in the prompt and
the output is all content."""

from __future__ import annotations

from router.openai.events import Content, Event, Reasoning, partial_suffix

OPEN, CLOSE = "<think>", "</think>"


def prompt_opens_thinking(prompt_tail: str) -> bool:
    """True when the rendered prompt ends inside an open `<think>` block."""
    tail = prompt_tail.rstrip()
    return tail.endswith(OPEN)


class ReasoningParser:
    def __init__(self, started_inside: bool) -> None:
        self._state = "reasoning" if started_inside else "start"
        self._buffer = ""
        self._strip_newlines = started_inside

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while True:
            step = getattr(self, f"_{self._state}")(events)
            if not step:
                return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._buffer:
            kind = Reasoning if self._state == "reasoning" else Content
            events.append(kind(self._buffer))
            self._buffer = ""
        return events

    # Each state consumes what it can from the buffer; True means "run again".
    def _start(self, events: list[Event]) -> bool:
        stripped = self._buffer.lstrip()
        if stripped.startswith(OPEN):
            self._buffer = stripped[len(OPEN) :]
            self._state, self._strip_newlines = "reasoning", True
            return True
        if OPEN.startswith(stripped):
            return False  # still could be `<think>`: wait (holds only leading whitespace + a tag prefix)
        self._state = "content"
        return True

    def _reasoning(self, events: list[Event]) -> bool:
        if self._strip_newlines:
            self._buffer = self._buffer.lstrip("\n")
            if not self._buffer:
                return False
            self._strip_newlines = False
        index = self._buffer.find(CLOSE)
        if index >= 0:
            thought = self._buffer[:index].rstrip("\n")
            if thought:
                events.append(Reasoning(thought))
            self._buffer = self._buffer[index + len(CLOSE) :]
            self._state, self._strip_newlines = "after", True
            return True
        keep = partial_suffix(self._buffer, CLOSE)
        # newlines before `</think>` are not part of the thought: hold them too
        ready = self._buffer[: len(self._buffer) - keep]
        emit = ready.rstrip("\n")
        if emit:
            events.append(Reasoning(emit))
        self._buffer = self._buffer[len(emit) :]
        return False

    def _after(self, events: list[Event]) -> bool:
        self._buffer = self._buffer.lstrip("\n")
        if not self._buffer:
            return False
        self._state = "content"
        return True

    def _content(self, events: list[Event]) -> bool:
        if self._buffer:
            events.append(Content(self._buffer))
            self._buffer = ""
        return False
