"""The reasoning and tool-call parsers on hand-written outputs of both Qwen families; the streaming
parser fed every fixture split at every character boundary folds to the single parse."""

from __future__ import annotations

import itertools
import json

import pytest

from router.openai.events import Content, ToolCallArguments, fold
from router.openai.output import OutputParser
from router.openai.reasoning import ReasoningParser, prompt_opens_thinking
from router.openai.tool_parsers import ToolCallParser, family_for_template, parameter_types

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "object"}}}}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}}}}},
]  # fmt: skip

# (family, template opened <think>, output, content, reasoning, [(name, arguments as a dict)])
FIXTURES = [
    ("json", False, "Hello there.", "Hello there.", "", []),
    ("json", False, "<think>\nplan it\n</think>\n\nThe answer is 4.", "The answer is 4.", "plan it", []),
    ("json", True, "plan: x < y and </thin\n</think>\n\nDone", "Done", "plan: x < y and </thin", []),
    ("json", False, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
     "Let me check.\n", "", [("get_weather", {"city": "Paris", "days": 3})]),
    ("json", False, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "units": {"t": "C"}}}\n</tool_call>\n'
     '<tool_call>\n{"name": "search", "arguments": {"query": "a } b </tool"}}\n</tool_call>',
     "", "", [("get_weather", {"city": "Oslo", "units": {"t": "C"}}), ("search", {"query": "a } b </tool"})]),
    ("json", True, 'need weather</think>\n\n<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>',
     "", "need weather", [("search", {})]),
    ("json", False, "<tool_call>\nnot json at all\n</tool_call> then text", "<tool_call>\nnot json at all\n</tool_call> then text", "", []),
    ("json", False, "a <tool_call> never closed", "a <tool_call> never closed", "", []),
    ("xml", False, "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n"
     "<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>", "Checking.\n\n", "", [("get_weather", {"city": "New York", "days": 2})]),
    ("xml", True, "think first\n</think>\n\n<tool_call>\n<function=search>\n<parameter=query>\nline one\nline two\n</parameter>\n"
     "</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=units>\n{\"t\": \"F\"}\n</parameter>\n</function>\n</tool_call>",
     "", "think first", [("search", {"query": "line one\nline two"}), ("get_weather", {"units": {"t": "F"}})]),
    ("xml", False, "<tool_call>\n<function=search>\n</function>\n</tool_call>", "", "", [("search", {})]),
    ("xml", False, "<tool_call>\n{\"name\": \"search\"}\n</tool_call>", "<tool_call>\n{\"name\": \"search\"}\n</tool_call>", "", []),
    ("xml", False, "<think>\n\n</think>\n\nplain <b>html</b> <tool", "plain <b>html</b> <tool", "", []),
]  # fmt: skip


def _parser(family: str, opened: bool) -> OutputParser:
    counter = itertools.count()
    tools = ToolCallParser(family, parameter_types(TOOLS), call_id=lambda: f"call_{next(counter)}")
    return OutputParser(ReasoningParser(started_inside=opened), tools)


@pytest.mark.parametrize("family,opened,output,content,reasoning,calls", FIXTURES)
def test_single_parse(family, opened, output, content, reasoning, calls):
    folded = fold(_parser(family, opened).parse_all(output))
    assert folded.content == content
    assert folded.reasoning == reasoning
    assert [(c.name, json.loads(c.arguments)) for c in folded.tool_calls] == calls
    assert [c.call_id for c in folded.tool_calls] == [f"call_{i}" for i in range(len(calls))]


@pytest.mark.parametrize("family,opened,output,content,reasoning,calls", FIXTURES)
def test_stream_split_everywhere_folds_to_the_single_parse(family, opened, output, content, reasoning, calls):
    whole = _parser(family, opened)
    expected = fold(whole.feed(output) + whole.finish())
    for cut in range(len(output) + 1):
        parser = _parser(family, opened)
        events = parser.feed(output[:cut]) + parser.feed(output[cut:]) + parser.finish()
        assert fold(events) == expected, f"split at {cut}: {output[:cut]!r} | {output[cut:]!r}"
    # one character at a time, as a token stream would
    parser = _parser(family, opened)
    events = [e for ch in output for e in parser.feed(ch)] + parser.finish()
    assert fold(events) == expected


def test_arguments_stream_before_the_call_closes():
    parser = _parser("json", False)
    events = parser.feed('<tool_call>\n{"name": "search", "arguments": {"query": "long text')
    pieces = [e.text for e in events if isinstance(e, ToolCallArguments)]
    assert "".join(pieces) == '{"query": "long text'
    more = parser.feed(' more"}}\n</tool_call>') + parser.finish()
    assert "".join(e.text for e in more if isinstance(e, ToolCallArguments)) == ' more"}'


def test_xml_parameters_stream_one_by_one():
    parser = _parser("xml", False)
    events = parser.feed("<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<param")
    assert [e.text for e in events if isinstance(e, ToolCallArguments)] == ['{"city": "Rome"']


def test_malformed_json_arguments_become_text_when_not_streaming():
    output = '<tool_call>\n{"name": "search", "arguments": {"query": oops}}\n</tool_call>'
    folded = fold(_parser("json", False).parse_all(output))
    assert folded.tool_calls == [] and folded.content == output


def test_truncated_call_is_finished_with_what_arrived():
    parser = _parser("xml", False)
    events = parser.feed("<tool_call>\n<function=search>\n<parameter=query>\nhalf") + parser.finish()
    assert json.loads(fold(events).tool_calls[0].arguments) == {"query": "half"}


def test_no_reasoning_parser_keeps_think_tags_as_content():
    parser = OutputParser(None, None)
    assert parser.parse_all("<think>x</think>y") == [Content("<think>x</think>y")]


def test_family_and_thinking_detection():
    assert family_for_template("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}") == "xml"
    assert family_for_template('{{- \'<tool_call>\\n{"name": "\' }}') == "json"
    assert family_for_template("{{ messages }}") is None
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
