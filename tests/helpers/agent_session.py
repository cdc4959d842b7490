"""An agent session with two tools, shared by the OpenAI API tests, and its rendering by
transformers (the independent reference for `render_chat`)."""

from __future__ import annotations

import json

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]  # fmt: skip


def agent_messages(turn: int) -> list[dict]:
    """A scripted agent session: the assistant's tool calls are written here, not sampled."""
    messages = [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Weather in Paris for 3 days, and find museums there."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 3}'}},
            {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"query": "Paris museums"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Louvre; Orsay"},
    ]  # fmt: skip
    if turn >= 2:
        messages += [
            {"role": "assistant", "content": "Let me check one more thing.", "tool_calls": [
                {"id": "call_3", "type": "function", "function": {"name": "search", "arguments": '{"query": "Louvre hours"}'}}]},
            {"role": "tool", "tool_call_id": "call_3", "content": "9:00-18:00"},
        ]  # fmt: skip
    return messages


def reference_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    parsed = json.loads(json.dumps(messages))
    for message in parsed:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])  # transformers wants mappings
    text = tokenizer.apply_chat_template(parsed, tools=TOOLS, add_generation_prompt=True, tokenize=False, **kwargs)
    return tokenizer.encode(text, add_special_tokens=False)
