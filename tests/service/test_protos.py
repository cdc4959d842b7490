"""The generated code is what `proto/` says, and every wire message round-trips."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from baton_pb import regenerate
from baton_pb.v1 import admin_pb2, common_pb2, public_pb2, worker_pb2

GENERATED = Path(regenerate.__file__).parent / "v1"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = regenerate.generate(tmp_path / "v1")
    assert fresh, "protoc produced nothing"
    for path in fresh:
        committed = GENERATED / path.name
        assert committed.exists(), f"{committed} is missing: run python -m baton_pb.regenerate"
        assert filecmp.cmp(path, committed, shallow=False), (
            f"{committed.name} is stale: run python -m baton_pb.regenerate"
        )
    committed_names = {p.name for p in GENERATED.glob("*_pb2*.py*")}
    assert {p.name for p in fresh} == committed_names


def _messages() -> list:
    sampling = common_pb2.SamplingParams(temperature=0.7, top_k=20, seed=7, stop=["\n\n"], max_tokens=9)
    descriptor = worker_pb2.TransferDescriptor(
        transfer_id="t1",
        backend="tcp",
        address=b"127.0.0.1:5000",
        units=[worker_pb2.RegionUnits(name="kv", units=[3, 9, 4])],
        layouts=[worker_pb2.RegionLayout(name="kv", dtype="float32", num_layers=2, num_units=64, unit_shape=[2, 16, 2, 8])],
        deadline_unix_s=1.5e9,
        skip_blocks=1,
    )
    return [
        public_pb2.GenerateRequest(session_id="s", token_ids=common_pb2.TokenIds(ids=[1, 2, 3]), sampling=sampling),
        public_pb2.GenerateRequest(chat=common_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="hi")])),
        public_pb2.GenerateRequest(
            chat=common_pb2.ChatMessages(
                messages=[
                    common_pb2.ChatMessage(role="user", content="weather?"),
                    common_pb2.ChatMessage(
                        role="assistant",
                        reasoning_content="look it up",
                        tool_calls=[common_pb2.ToolCall(id="c1", type="function", name="get", arguments='{"city": "Oslo"}')],
                    ),
                    common_pb2.ChatMessage(role="tool", content="4 C", tool_call_id="c1", name="get"),
                ],
                tools_json='[{"type": "function", "function": {"name": "get"}}]',
                template_kwargs_json='{"enable_thinking": false}',
                add_generation_prompt=False,
            )
        ),
        public_pb2.GenerateResponse(request_id="r", token_ids=[5], text="x", usage=common_pb2.Usage(cached_tokens=16)),
        admin_pb2.ListWorkersResponse(workers=[admin_pb2.WorkerInfo(worker_id="p0", role="prefill", epoch=3)]),
        worker_pb2.PrefillRequest(request=worker_pb2.WorkerRequest(request_id="r", prompt_token_ids=[1, 2]), destination=descriptor),
        worker_pb2.KvEventBatch(worker_id="d0", epoch=2, events=[worker_pb2.KvEvent(kind="stored", block_hashes=[2**64 - 1])]),
    ]


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_messages_round_trip(message) -> None:
    decoded = type(message).FromString(message.SerializeToString())
    assert decoded == message
