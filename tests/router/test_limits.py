"""Bounds on one request's work: each limit refuses with a message naming its flag, the session
memory is bounded in bytes (not only in count), and a full tokenizer pool refuses instead of queueing."""

from __future__ import annotations

import threading

import pytest

from baton.client import build_request
from router.limits import RequestLimits, check_prompt_tokens, check_request
from router.prompt_hashes import PromptHasher
from router.sessions import SessionTable
from router.tokenize_pool import TokenizePool
from rpc.errors import AdmissionRejected

LIMITS = RequestLimits(
    max_prompt_bytes=1000,
    max_prompt_tokens=50,
    max_request_id_bytes=16,
    max_session_id_bytes=32,
    max_stop_strings=3,
    max_stop_bytes=20,
    max_stop_token_ids=4,
)


def _request(text=None, token_ids=(1, 2, 3), session_id="", request_id="", **sampling):
    return build_request(session_id, text, None if text is not None else list(token_ids), None, "", request_id, False, sampling)


@pytest.mark.parametrize(
    ("fields", "flag"),
    [
        ({"request_id": "r" * 17}, "--max-request-id-bytes"),
        ({"request_id": "é" * 9}, "--max-request-id-bytes"),  # 18 bytes in UTF-8, 9 characters
        ({"session_id": "s" * 33}, "--max-session-id-bytes"),
        ({"text": "x" * 1001}, "--max-prompt-bytes"),
        ({"stop": ["a", "b", "c", "d"]}, "--max-stop-strings"),
        ({"stop": ["a" * 11, "b" * 10]}, "--max-stop-bytes"),
        ({"stop_token_ids": [1, 2, 3, 4, 5]}, "--max-stop-token-ids"),
    ],
)
def test_each_limit_refuses_with_its_flag(fields, flag):
    with pytest.raises(ValueError, match=flag):
        check_request(_request(**fields), LIMITS)


def test_requests_at_the_limits_pass():
    check_request(
        _request(
            text="x" * 1000, request_id="r" * 16, session_id="s" * 32, stop=["a" * 10, "b" * 10], stop_token_ids=[1, 2, 3, 4]
        ),
        LIMITS,
    )
    check_prompt_tokens(50, LIMITS)
    with pytest.raises(ValueError, match="--max-prompt-tokens"):
        check_prompt_tokens(51, LIMITS)
    check_prompt_tokens(10**6, RequestLimits())  # 0: only the context window bounds it


def test_huge_session_ids_are_bounded_in_bytes_not_only_in_count():
    """400 distinct 4 MB session ids kept 1.65 GB: a count of 100,000 bounds nothing."""
    table = SessionTable(max_sessions=100_000, max_bytes=64 << 20)
    hasher = PromptHasher(16, max_sessions=10_000, max_bytes=64 << 20)
    for i in range(400):
        session = f"{i:08d}" + "s" * (4 << 20)
        table.record(session, "decode-0", "prefill-0")
        hasher.hashes(list(range(64)), b"extra", session)
    assert table.bytes <= 64 << 20 and len(table) < 400
    assert hasher.bytes <= 64 << 20 and len(hasher._sessions) < 400
    assert table.get(f"{399:08d}" + "s" * (4 << 20)) is not None, "the newest session is kept"


def test_session_byte_accounting_survives_updates_and_expiry():
    now = [0.0]
    table = SessionTable(max_sessions=10, ttl_s=5.0, clock=lambda: now[0], max_bytes=1 << 20)
    table.record("a", "d", "p")
    table.record("a", "d2", "p")  # an update does not count twice
    table.record("b", "d", "p")
    two = table.bytes
    now[0] = 10.0
    assert table.get("a") is None and table.get("b") is None
    assert table.bytes == 0 < two


def test_tokenize_pool_refuses_when_full_and_runs_small_work_inline():
    pool = TokenizePool(threads=1, queue=0, inline_below_bytes=100)
    release = threading.Event()
    started = threading.Event()

    def big():
        started.set()
        release.wait(10)
        return "big"

    results = []
    worker = threading.Thread(target=lambda: results.append(pool.run(big, 1000)))
    worker.start()
    assert started.wait(10)
    assert pool.active == 1
    with pytest.raises(AdmissionRejected, match="tokenized"):
        pool.run(lambda: "refused", 1000)
    assert pool.run(lambda: threading.current_thread().name, 10) == threading.current_thread().name
    release.set()
    worker.join(10)
    assert results == ["big"] and pool.active == 0
    pool.close()


def test_every_limit_and_the_redis_key_prefix_have_a_flag():
    from router.server import arg_parser, config_from_args
    from worker.config import worker_config_from_args

    flags = {
        "--max-prompt-bytes": ("max_prompt_bytes", 1000),
        "--max-prompt-tokens": ("max_prompt_tokens", 50),
        "--max-request-id-bytes": ("max_request_id_bytes", 16),
        "--max-session-id-bytes": ("max_session_id_bytes", 32),
        "--max-stop-strings": ("max_stop_strings", 3),
        "--max-stop-bytes": ("max_stop_bytes", 20),
        "--max-stop-token-ids": ("max_stop_token_ids", 4),
    }
    argv = ["--model", "m", "--decode", "d:1", "--redis-key-prefix", "team-a", "--max-session-bytes", "4096"]
    for flag, (_, value) in flags.items():
        argv += [flag, str(value)]
    config = config_from_args(arg_parser().parse_args(argv))
    assert config.limits == LIMITS
    assert (config.redis_key_prefix, config.max_session_bytes) == ("team-a", 4096)
    worker = worker_config_from_args("decode", ["--model", "m", "--redis-key-prefix", "team-a"])
    assert worker.redis_key_prefix == "team-a"


def test_sessions_are_scoped_per_tenant():
    from router.prompts import PreparedRequest

    alice = PreparedRequest("r", "agent-1", "alice", [1], None)
    bob = PreparedRequest("r", "agent-1", "bob", [1], None)
    table = SessionTable()
    table.record(alice.session_key, "decode-a", "")
    assert table.get(bob.session_key) is None, "bob's session of the same name has no affinity of alice's"
    assert table.get(alice.session_key).decode_worker == "decode-a"
    assert PreparedRequest("r", "", "alice", [1], None).session_key == ""
