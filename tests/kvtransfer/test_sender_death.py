"""A sender process killed with SIGKILL mid-transfer leaves the receiver FAILED within the deadline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvtransfer.base import TransferStatus, UnknownTransfer
from kvtransfer.factory import create_backend
from tests.kvtransfer.conftest import ucx_unavailable_reason
from tests.kvtransfer.helpers import make_regions, zeros_like_regions

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 4.0


def _readline(proc: subprocess.Popen, expected: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = proc.stdout.readline().strip()
        if line == expected:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sender exited: {proc.stderr.read()}")
    raise AssertionError(f"sender never said {expected!r}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend_name", ["tcp", "ucx"])
def test_killed_sender_leaves_receiver_failed_within_deadline(backend_name):
    if backend_name == "ucx" and (reason := ucx_unavailable_reason()):
        pytest.skip(reason)
    receiver = create_backend(backend_name)
    regions = zeros_like_regions(make_regions(21))
    receiver.register(regions)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kvtransfer.sender_process", backend_name, "21"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _readline(proc, "ready", 30.0)
        units = {"kv": list(range(8, 16)), "conv": [2], "ssm": [2]}
        desc = receiver.expect("doomed", units, deadline_s=DEADLINE_S)
        started = time.monotonic()
        proc.stdin.write(json.dumps(desc.to_dict()) + "\n")
        proc.stdin.flush()
        _readline(proc, "posted", DEADLINE_S)
        assert receiver.status("doomed")[0] is TransferStatus.TRANSFERRING
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        result = receiver.wait("doomed", timeout_s=DEADLINE_S + 5)
        elapsed = time.monotonic() - started
        assert result.status is TransferStatus.FAILED, result
        assert result.reason
        if backend_name == "tcp":  # the kernel closes the socket: no need to wait for the deadline
            assert "disconnected" in result.reason and elapsed < DEADLINE_S, (result.reason, elapsed)
        assert elapsed < DEADLINE_S + 1.0, f"FAILED only after {elapsed:.1f}s"
        receiver.forget("doomed")  # the service releases the reservation here
        with pytest.raises(UnknownTransfer):
            receiver.status("doomed")
        # The units are free for the next transfer: a fresh reservation over them works.
        receiver.expect("next", units, deadline_s=1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        receiver.close()
