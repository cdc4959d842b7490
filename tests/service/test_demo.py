"""The README's main-job command works: `baton demo` writes its checkpoint, serves a multi-turn
agent session through router + prefill + decode processes, reports cache hits from turn 2 on, and
shuts down cleanly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+%\s+([\d.]+)\s+([\d.]+)\s+(\S+)")


def test_baton_demo_reports_cached_tokens_from_turn_two(tmp_path):
    model = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "baton", "demo", "--model", str(model), "--turns", "3"],
        capture_output=True, text=True, timeout=200, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (model / "config.json").is_file(), "the demo writes its checkpoint when missing"
    rows = [ROW.match(line) for line in done.stdout.splitlines()]
    turns = [(int(m[1]), int(m[2]), int(m[3])) for m in rows if m]
    assert [t for t, _, _ in turns] == [1, 2, 3], done.stdout
    assert turns[0][2] == 0, "the first turn has nothing cached"
    assert all(cached > 0 for _, _, cached in turns[1:]), done.stdout
    assert all(prompt > cached for _, prompt, cached in turns), "the new part of each turn is computed"
    http = re.search(r"prompt (\d+) tokens, cached (\d+), (\d+) out", done.stdout)
    assert http, "the demo also runs one turn through the OpenAI HTTP API: " + done.stdout
    assert int(http[2]) > 0, "the HTTP turn continues the session: its prefix is cached"
    assert "shut down cleanly" in done.stdout
