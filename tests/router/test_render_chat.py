"""render_chat refuses bad chat input with a message naming what is wrong (INVALID_ARGUMENT on the wire)."""

from __future__ import annotations

import pytest

from baton_pb.v1 import common_pb2
from engine.tokenizer import Tokenizer
from router.prompts import chat_messages, render_chat
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)


def _message(role: str, content: str = "x", **fields) -> common_pb2.ChatMessage:
    return common_pb2.ChatMessage(role=role, content=content, **fields)


CALL = common_pb2.ToolCall(id="c1", type="function", name="get", arguments='{"city": "Oslo"}')
ASK, CALLED = _message("user", "weather?"), _message("assistant", "", tool_calls=[CALL])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoint("qwen3_next"))


@pytest.mark.parametrize(
    ("chat", "message"),
    [
        (common_pb2.ChatMessages(), "no messages"),
        (common_pb2.ChatMessages(messages=[_message("wizard")]), "unknown chat role 'wizard'"),
        (common_pb2.ChatMessages(messages=[ASK, CALLED, _message("tool", "4 C")]), r"messages\[2\].*tool_call_id"),
        (
            common_pb2.ChatMessages(messages=[ASK, CALLED, _message("tool", "4 C", tool_call_id="c9")]),
            "'c9' answers no earlier assistant tool call",
        ),
        (
            common_pb2.ChatMessages(messages=[_message("tool", "4 C", tool_call_id="c1"), ASK, CALLED]),
            "answers no earlier",
        ),
        (common_pb2.ChatMessages(messages=[_message("user", tool_calls=[CALL])]), "only assistant messages"),
        (
            common_pb2.ChatMessages(
                messages=[ASK, _message("assistant", tool_calls=[common_pb2.ToolCall(id="c1", name="get", arguments="{oops")])]
            ),
            "arguments are not valid JSON",
        ),
        (
            common_pb2.ChatMessages(
                messages=[ASK, _message("assistant", tool_calls=[common_pb2.ToolCall(id="c1", name="get", arguments="[1]")])]
            ),
            "must be a JSON object",
        ),
        (common_pb2.ChatMessages(messages=[ASK, _message("assistant", tool_calls=[common_pb2.ToolCall(id="c1")])]), "function name"),
        (common_pb2.ChatMessages(messages=[ASK], tools_json="[{"), "tools_json is not valid JSON"),
        (common_pb2.ChatMessages(messages=[ASK], tools_json='{"a": 1}'), "JSON array"),
        (common_pb2.ChatMessages(messages=[ASK], template_kwargs_json="nope"), "template_kwargs_json is not valid JSON"),
        (common_pb2.ChatMessages(messages=[ASK], template_kwargs_json="[true]"), "must be a JSON object"),
        (common_pb2.ChatMessages(messages=[ASK], template_kwargs_json='{"messages": []}'), "may not set"),
    ],
)
def test_bad_chat_input_is_a_clear_value_error(tokenizer, chat, message) -> None:
    with pytest.raises(ValueError, match=message):
        render_chat(tokenizer, chat)


def test_a_valid_agent_turn_becomes_openai_style_dicts() -> None:
    chat = common_pb2.ChatMessages(
        messages=[ASK, _message("assistant", "", tool_calls=[CALL], reasoning_content="why"), _message("tool", "4 C", tool_call_id="c1")]
    )
    messages = chat_messages(chat)
    assert messages[1] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": "why",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": {"city": "Oslo"}}}],
    }
    assert messages[2] == {"role": "tool", "content": "4 C", "tool_call_id": "c1"}


def test_add_generation_prompt_defaults_to_true(tokenizer) -> None:
    chat = common_pb2.ChatMessages(messages=[ASK])
    with_prompt = render_chat(tokenizer, chat)
    chat.add_generation_prompt = False
    without = render_chat(tokenizer, chat)
    assert with_prompt[: len(without)] == without and len(with_prompt) > len(without)
