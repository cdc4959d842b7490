"""The model's text → events: the reasoning split first, then tool calls in what is content."""

from __future__ import annotations

from router.openai.events import Content, Event
from router.openai.reasoning import ReasoningParser
from router.openai.tool_parsers import ToolCallParser, demote_malformed


class OutputParser:
    def __init__(self, reasoning: ReasoningParser | None, tools: ToolCallParser | None, prefix: str = "") -> None:
        """`prefix`: text the router wrote into the prompt for the model to continue (a forced
        call's opening); parsed as if the model had written it."""
        self.reasoning = reasoning
        self.tools = tools
        self._pending = self._parse(prefix)

    def feed(self, text: str) -> list[Event]:
        events, self._pending = self._pending + self._parse(text), []
        return events

    def _parse(self, text: str) -> list[Event]:
        if not text:
            return []
        return self._route(self.reasoning.feed(text) if self.reasoning else [Content(text)])

    def finish(self) -> list[Event]:
        events, self._pending = self._pending, []
        events += self._route(self.reasoning.finish()) if self.reasoning else []
        if self.tools:
            events.extend(self.tools.finish())
        return events

    def _route(self, events: list[Event]) -> list[Event]:
        if self.tools is None:
            return events
        routed: list[Event] = []
        for event in events:
            routed.extend(self.tools.feed(event.text) if isinstance(event, Content) else [event])
        return routed

    def parse_all(self, text: str) -> list[Event]:
        """A whole answer at once (non-streaming): malformed calls become text."""
        events = self.feed(text) + self.finish()
        return demote_malformed(events, self.tools.raw_calls) if self.tools else events
