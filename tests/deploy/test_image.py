"""The image installs what pyproject.toml packages, and it starts: a wheel built from exactly what
deploy/Dockerfile copies (after its .dockerignore), installed into a fresh venv, runs every entry
point's `--help` and imports every shipped module from that venv, from a folder outside the
checkout. (`bench/` is not shipped: benchmarks import tests.helpers and run from a checkout.)"""

from __future__ import annotations

import pytest
import tomllib
from setuptools import find_packages

from tests.deploy.image_build import (
    BUILD_STAGES,
    DOCKERFILE,
    DOCKERIGNORE,
    assemble_context,
    build_wheel,
    check_installed,
    copy_instructions,
    install_into_fresh_venv,
)
from tests.deploy.manifest_commands import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def shipped_top_level() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(p for p in find_packages(str(REPO), include=include) if "." not in p)


def image_problems(tmp_path, dockerfile_text: str, dockerignore_text: str) -> list[str]:
    src = assemble_context(tmp_path / "src", dockerfile_text, dockerignore_text)
    wheel = build_wheel(src, tmp_path / "wheels")
    python = install_into_fresh_venv(wheel, tmp_path / "venv")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    return check_installed(python, workdir, shipped_top_level())


def test_both_build_stages_copy_the_same_sources():
    text = DOCKERFILE.read_text()
    assert copy_instructions(text, BUILD_STAGES[0]) == copy_instructions(text, BUILD_STAGES[1])


def test_bench_is_not_shipped():
    assert "bench" not in shipped_top_level(), "bench imports tests.helpers, which the image lacks"


def test_image_installs_and_starts(tmp_path):
    problems = image_problems(tmp_path, DOCKERFILE.read_text(), DOCKERIGNORE.read_text())
    assert problems == []


def test_image_check_fails_when_a_package_is_left_out(tmp_path):
    """The proof that the check above can fail: leave `rpc` out of the build context."""
    problems = image_problems(tmp_path, DOCKERFILE.read_text(), DOCKERIGNORE.read_text() + "\nrpc\n")
    assert problems and all("rpc" in p or "router" in p or "worker" in p or "baton" in p for p in problems)
    assert any("rpc.grpc_server" in p for p in problems)
