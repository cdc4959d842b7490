"""Tool calls in the model's output → OpenAI `tool_calls`, streaming, for both Qwen families.

- Qwen3-Next (Hermes style): `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`.
  The arguments' JSON text streams as it arrives; what is held back is only what could still be
  the wrapper's closing `}`, whitespace or a partial `</tool_call>`.
- Qwen3.5 (XML): `<tool_call>\n<function=f>\n<parameter=p>\nvalue\n</parameter>\n</function>\n
  </tool_call>`. Each finished parameter streams as the next piece of a JSON object; a value is
  typed by the tool's JSON schema (integer, number, boolean, object, array) and is a string
  otherwise.

Which family: `family_for_template` reads the checkpoint's chat template. A call whose opening
cannot be read (no `{"name": …, "arguments":` / `<function=…>` after `<tool_call>`) is returned as
text. Decisions depend only on the text, never on how it was split into deltas, so the folded
stream equals a single parse (a test splits every fixture at every character).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from router.openai.events import Content, Event, ToolCallArguments, ToolCallStart, partial_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNCTION_CLOSE, PARAMETER_CLOSE = "</function>", "</parameter>"
MAX_HEADER_CHARS = 512  # an opening that has not parsed by then is not a call
JSON_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:')
XML_HEADER = re.compile(r"\s*<function=([^>\n]+)>")
XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>")
TYPED = ("integer", "number", "boolean", "object", "array", "null")


def family_for_template(template: str | None) -> str | None:
    """"xml" (Qwen3.5), "json" (Qwen3-Next) or None (the template knows no tool calls)."""
    if not template or OPEN not in template:
        return None
    return "xml" if "<function=" in template else "json"


def call_opening(family: str, name: str) -> str:
    """The text that starts a call in `family`'s format; `name` "" stops before the function name."""
    if family == "json":
        return OPEN + '\n{"name": ' + (json.dumps(name) + ', "arguments": ' if name else "")
    return OPEN + "\n" + (f"<function={name}>\n" if name else "")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parameter_types(tools: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """function name → parameter name → JSON schema type, from OpenAI tool definitions."""
    result: dict[str, dict[str, str]] = {}
    for tool in tools:
        function = tool.get("function") or {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        result[function.get("name", "")] = {
            name: spec.get("type", "") if isinstance(spec, dict) else "" for name, spec in properties.items()
        }
    return result


class ToolCallParser:
    """Feed it content text; it returns content and tool-call events. `finish()` flushes."""

    def __init__(self, family: str, types: dict[str, dict[str, str]] | None = None,
                 call_id: Callable[[], str] = new_call_id) -> None:  # fmt: skip
        if family not in ("json", "xml"):
            raise ValueError(f"unknown tool-call family {family!r}")
        self.family = family
        self._types = types or {}
        self._call_id = call_id
        self._state = "text"
        self._buffer = ""
        self._calls = 0
        self._after_call = False  # whitespace after a call is not content
        self._function = ""
        self._arguments_sent = 0  # json: characters of the arguments text sent
        self._parameters = 0  # xml: parameters sent for the current call
        self.raw_calls: list[str] = []  # each call's text, for `demote_malformed`

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        events: list[Event] = []
        while getattr(self, f"_{self._state}")(events):
            pass
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        if self._state == "header":
            events.append(Content(OPEN + self._buffer))
        elif self._state == "arguments":
            arguments = self._buffer.lstrip()
            self.raw_calls[-1] += self._buffer
            self._send_arguments(events, _trim_wrapper(arguments))
        elif self._state == "params":
            if self._buffer.lstrip().startswith("<parameter="):
                self._parameter(events, self._buffer.lstrip() + PARAMETER_CLOSE)
            self._close_object(events)
        elif self._state == "text" and self._buffer and not (self._after_call and not self._buffer.strip()):
            events.append(Content(self._buffer))
        self._buffer, self._state = "", "text"
        return events

    # ---- states: each consumes what it can; True = run again ------------------------------------
    def _text(self, events: list[Event]) -> bool:
        index = self._buffer.find(OPEN)
        if index >= 0:
            self._emit_text(events, self._buffer[:index])
            self._buffer = self._buffer[index + len(OPEN) :]
            self._state = "header"
            return True
        keep = partial_suffix(self._buffer, OPEN)
        ready = self._buffer[: len(self._buffer) - keep]
        if self._after_call and not ready.strip():
            return False  # hold whitespace: it is content only if text follows
        self._emit_text(events, ready)
        self._buffer = self._buffer[len(ready) :]
        return False

    def _emit_text(self, events: list[Event], text: str) -> None:
        if self._after_call:
            if not text.strip():
                return
            self._after_call = False
        if text:
            events.append(Content(text))

    def _header(self, events: list[Event]) -> bool:
        pattern = JSON_HEADER if self.family == "json" else XML_HEADER
        match = pattern.match(self._buffer)
        if match:
            name = json.loads(match.group(1)) if self.family == "json" else match.group(1).strip()
            self._function = name
            events.append(ToolCallStart(self._calls, self._call_id(), name))
            self.raw_calls.append(OPEN + self._buffer[: match.end()])
            self._buffer = self._buffer[match.end() :]
            self._arguments_sent, self._parameters = 0, 0
            self._state = "arguments" if self.family == "json" else "params"
            return True
        close = self._buffer.find(CLOSE)
        if close >= 0 or len(self._buffer) > MAX_HEADER_CHARS:
            end = close + len(CLOSE) if close >= 0 else len(self._buffer)
            events.append(Content(OPEN + self._buffer[:end]))  # not a call: text, as written
            self._buffer = self._buffer[end:]
            self._state = "text"
            return True
        return False

    def _arguments(self, events: list[Event]) -> bool:  # json family
        close = self._buffer.find(CLOSE)
        if close >= 0:
            body = self._buffer[:close]
            self.raw_calls[-1] += body + CLOSE
            self._send_arguments(events, _trim_wrapper(body.lstrip()))
            self._end_call(close + len(CLOSE))
            return True
        arguments = self._buffer.lstrip()
        safe = _trim_wrapper(arguments[: len(arguments) - partial_suffix(arguments, CLOSE)])
        if len(safe) > self._arguments_sent:
            self._send_arguments(events, safe)
        return False

    def _send_arguments(self, events: list[Event], arguments: str) -> None:
        if len(arguments) > self._arguments_sent:
            events.append(ToolCallArguments(self._calls, arguments[self._arguments_sent :]))
            self._arguments_sent = len(arguments)

    def _params(self, events: list[Event]) -> bool:  # xml family
        body = self._buffer.lstrip()
        if body.startswith("<parameter="):
            end = body.find(PARAMETER_CLOSE)
            if end < 0:
                return False
            self._parameter(events, body[: end + len(PARAMETER_CLOSE)])
            self._consume_raw(len(self._buffer) - len(body) + end + len(PARAMETER_CLOSE))
            return True
        for closer in (FUNCTION_CLOSE, CLOSE):
            if body.startswith(closer):
                self._close_object(events)
                self._consume_raw(len(self._buffer) - len(body) + len(closer))
                if closer == CLOSE:
                    self._end_call(0)
                else:
                    self._state = "closing"
                return True
        if any(tag.startswith(body) for tag in ("<parameter=", FUNCTION_CLOSE, CLOSE)):
            return False  # a tag may be arriving
        # Stray text inside the function: the call ends here; the text is content.
        self._close_object(events)
        self._end_call(0)
        return True

    def _parameter(self, events: list[Event], text: str) -> None:
        match = XML_PARAMETER.match(text)
        name = match.group(1).strip() if match else "?"
        value = text[match.end() if match else 0 : -len(PARAMETER_CLOSE)]
        value = value.removeprefix("\n").removesuffix("\n")
        kind = self._types.get(self._function, {}).get(name, "")
        piece = ("{" if self._parameters == 0 else ", ") + json.dumps(name) + ": " + _typed_json(value, kind)
        self._parameters += 1
        events.append(ToolCallArguments(self._calls, piece))

    def _close_object(self, events: list[Event]) -> None:
        events.append(ToolCallArguments(self._calls, "}" if self._parameters else "{}"))
        self._parameters = -1

    def _closing(self, events: list[Event]) -> bool:  # xml: after </function>
        body = self._buffer.lstrip()
        if body.startswith(CLOSE):
            self._consume_raw(len(self._buffer) - len(body) + len(CLOSE))
            self._end_call(0)
            return True
        if CLOSE.startswith(body):
            return False
        self._end_call(0)  # no closing tag: what follows is content
        return True

    def _consume_raw(self, size: int) -> None:
        self.raw_calls[-1] += self._buffer[:size]
        self._buffer = self._buffer[size:]

    def _end_call(self, consumed: int) -> None:
        self._buffer = self._buffer[consumed:]
        self._calls += 1
        self._after_call = True
        self._state = "text"


def _trim_wrapper(text: str) -> str:
    """The arguments' text: without the closing `}` of the `{"name":…}` wrapper and whitespace."""
    text = text.rstrip()
    return text[:-1].rstrip() if text.endswith("}") else text


def _typed_json(value: str, kind: str) -> str:
    if kind in TYPED:
        try:
            return json.dumps(json.loads(value))
        except json.JSONDecodeError:
            pass
    return json.dumps(value)


def demote_malformed(events: list[Event], raw_calls: list[str]) -> list[Event]:
    """Non-streaming answers only: a call whose arguments are not a JSON object becomes its text."""
    arguments: dict[int, str] = {}
    for event in events:
        if isinstance(event, ToolCallArguments):
            arguments[event.index] = arguments.get(event.index, "") + event.text
    bad = {index for index in range(len(raw_calls)) if not _is_object(arguments.get(index, ""))}
    if not bad:
        return events
    result: list[Event] = []
    renumber: dict[int, int] = {}
    for event in events:
        if isinstance(event, ToolCallStart | ToolCallArguments) and event.index in bad:
            if isinstance(event, ToolCallStart):
                result.append(Content(raw_calls[event.index]))
            continue
        if isinstance(event, ToolCallStart):
            renumber[event.index] = len(renumber)
            result.append(ToolCallStart(renumber[event.index], event.call_id, event.name))
        elif isinstance(event, ToolCallArguments):
            result.append(ToolCallArguments(renumber[event.index], event.text))
        else:
            result.append(event)
    return result


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False
