"""StallWatch against a scripted stream: beats keep a stream alive, silence and heartbeats without
progress end it as WorkerStalled (UNAVAILABLE, so the flow fails over)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from router.stall_watch import StallWatch, WorkerStalled

pytestmark = pytest.mark.timeout(30)


class _Cancelled(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED


class ScriptedCall:
    """Yields (delay_s, message) pairs; cancel() ends the wait at once, as gRPC's does."""

    def __init__(self, script: list[tuple[float, str]]) -> None:
        self.script = script
        self.cancelled = threading.Event()

    def __iter__(self):
        for delay, message in self.script:
            if self.cancelled.wait(delay):
                raise _Cancelled()
            yield message

    def cancel(self) -> None:
        self.cancelled.set()


def test_heartbeats_keep_a_slow_stream_alive():
    script = [(0.1, "beat")] * 10 + [(0.0, "done")]
    assert list(StallWatch(ScriptedCall(script), stall_timeout_s=0.4)) == ["beat"] * 10 + ["done"]


def test_silence_ends_the_stream_as_a_stall_within_the_timeout():
    call = ScriptedCall([(0.0, "token"), (30.0, "never")])
    started = time.monotonic()
    seen = []
    with pytest.raises(WorkerStalled) as stalled:
        for message in StallWatch(call, stall_timeout_s=0.3):
            seen.append(message)
    assert seen == ["token"] and call.cancelled.is_set()
    assert stalled.value.code() == grpc.StatusCode.UNAVAILABLE and "no heartbeat" in stalled.value.details()
    assert time.monotonic() - started < 1.5


def test_heartbeats_without_progress_hit_the_progress_deadline():
    call = ScriptedCall([(0.05, "beat")] * 100)
    with pytest.raises(WorkerStalled) as stalled:
        list(StallWatch(call, stall_timeout_s=1.0, progress_deadline_s=0.4, is_progress=lambda m: m != "beat"))
    assert "no progress" in stalled.value.details()


def test_other_errors_pass_through_untouched():
    class Broken:
        def __iter__(self):
            raise _Cancelled()
            yield  # pragma: no cover

        def cancel(self):
            pass

    with pytest.raises(_Cancelled):
        list(StallWatch(Broken(), stall_timeout_s=5.0))


def test_worker_flags_for_the_trust_domain(tmp_path, monkeypatch):
    from worker.config import worker_config_from_args

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.delenv("BATON_CLUSTER_TOKEN", raising=False)
    config = worker_config_from_args("decode", ["--model", "m", "--cluster-token-file", str(token_file)])
    assert config.cluster.token == "s3cret" and config.max_reservation_s == 60.0
    monkeypatch.setenv("BATON_CLUSTER_TOKEN", "from-env")
    assert worker_config_from_args("decode", ["--model", "m"]).cluster.token == "from-env"
    for bad in (["--max-reservation-s", "0"], ["--tenant-reservation-share", "1.5"], ["--heartbeat-s", "inf"]):
        with pytest.raises(SystemExit):
            worker_config_from_args("decode", ["--model", "m", *bad])
    with pytest.raises(ValueError, match="cannot read the cluster token file"):
        worker_config_from_args("decode", ["--model", "m", "--cluster-token-file", str(tmp_path / "missing")])
    token_file.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        worker_config_from_args("decode", ["--model", "m", "--cluster-token-file", str(token_file)])
