"""deploy/Dockerfile is not built in CI (no Docker engine); read it and hold it to its promises:
two final targets (cpu, cuda), each non-root with an entry point, from sources that exist."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.deploy.manifest_commands import REPO

pytestmark = pytest.mark.timeout(30)

DOCKERFILE = REPO / "deploy" / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert match, f"unnamed stage: FROM {rest}"
            current = match.group(2)
            result[current] = [("FROM", match.group(1))]
        elif current is not None:
            result[current].append((keyword, rest))
    return result


def test_stages_and_targets():
    parsed = stages(DOCKERFILE.read_text())
    assert set(parsed) == {"cpu-build", "cpu", "cuda-build", "cuda"}
    assert parsed["cpu"][0][1] == "${PYTHON_IMAGE}" and parsed["cuda"][0][1] == "${CUDA_IMAGE}"
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text and "ARG TORCH_VERSION=2.13.0" in text
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:12\.[89]", text), "B200 (sm_100) needs CUDA >= 12.8"


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_final_stage_is_non_root_with_entry_point(target):
    stage = stages(DOCKERFILE.read_text())[target]
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users, f"{target}: no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and uid.isdigit(), "numeric non-root uid (runAsNonRoot can verify it)"
    keywords = [keyword for keyword, _ in stage]
    assert "ENTRYPOINT" in keywords and "CMD" in keywords and "STOPSIGNAL" in keywords
    entry = next(rest for keyword, rest in stage if keyword == "ENTRYPOINT")
    assert entry.startswith("[") and "baton-entrypoint" in entry, "exec form, so signals reach the server"
    assert any(keyword == "COPY" and "--from=" in rest for keyword, rest in stage), "multi-stage copy"


def test_copied_sources_exist():
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (REPO / source).exists(), f"COPY source missing: {source}"


def test_entrypoint_dispatches_roles(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "python $*"\n')
    fake_python.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    for role in ("router", "prefill_worker", "decode_worker"):
        out = subprocess.run(
            ["sh", str(ENTRYPOINT), role, "--listen", "0.0.0.0:1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        assert out.strip() == f"python -m {role} --listen 0.0.0.0:1"
    assert subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, timeout=10).returncode == 0
