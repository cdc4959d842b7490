"""`render_chat` with tools and template kwargs renders both families' templates exactly like
transformers; failures map to OpenAI statuses (429 with retry-after, 503, 404, 401)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from baton_pb.v1 import common_pb2
from engine.sampler import Logprob
from engine.tokenizer import Tokenizer
from router.openai.chat_request import chat_request
from router.openai.errors import BadRequest, api_error
from router.prompts import render_chat
from rpc.convert import logprobs_to_proto
from rpc.errors import AdmissionRejected, NotFound, ServiceUnavailable, Unauthenticated
from tests.helpers.agent_session import TOOLS, agent_messages, reference_ids
from tests.helpers.chat_templates import with_template


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5"])
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}])
def test_render_chat_matches_transformers(tiny_model, tmp_path, family, kwargs):
    transformers = pytest.importorskip("transformers")
    model = with_template(Path(tiny_model), family, tmp_path)
    reference = transformers.AutoTokenizer.from_pretrained(str(model))
    messages = agent_messages(2)
    body = {"messages": messages, "tools": TOOLS, "chat_template_kwargs": kwargs}
    chat = chat_request(body, "").generate.chat
    assert render_chat(Tokenizer.from_dir(model), chat) == reference_ids(reference, messages, **kwargs)


def test_render_chat_refuses_bad_json(tiny_model):
    tokenizer = Tokenizer.from_dir(tiny_model)
    chat = common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="x")], tools_json="{")
    with pytest.raises(ValueError, match="tools_json"):
        render_chat(tokenizer, chat)


def test_error_statuses():
    full = api_error(AdmissionRejected("router is full", retry_after_ms=1500))
    assert (full.status, full.headers()) == (429, {"retry-after": "2"})
    assert api_error(ServiceUnavailable("no decode worker")).status == 503
    assert api_error(NotFound("unknown model")).status == 404
    assert api_error(Unauthenticated("invalid token")).status == 401
    bad = api_error(BadRequest("'n' must be 1", "n"))
    assert bad.status == 400 and bad.body()["error"]["param"] == "n"
    assert json.dumps(bad.body())


def test_engine_logprobs_reach_the_wire_with_their_top_tokens():
    [entry] = logprobs_to_proto([Logprob(7, -0.5, top_token_ids=(7, 3), top_logprobs=(-0.5, -1.25))])
    assert (entry.token_id, entry.logprob, list(entry.top_token_ids), list(entry.top_logprobs)) == (7, -0.5, [7, 3], [-0.5, -1.25])
