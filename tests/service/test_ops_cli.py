"""The small CLI gaps operators met: `baton --help` and `--version`, `baton size MODEL_DIR`,
`--max-tokens-limit` (default: the model's context, not a fixed 8192), and `baton scale` showing
progress while the pools resize."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import baton.commands.scale as scale_command
from baton.cli import DESCRIPTION, main
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, common_pb2, public_pb2
from router.config import RouterConfig
from router.pools.static import StaticPool
from router.server import arg_parser, config_from_args, start_router

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "deploy" / "configs"


def test_version_is_the_installed_package_version():
    done = subprocess.run([sys.executable, "-m", "baton", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"baton {importlib.metadata.version('baton')}"


def test_help_describes_baton_and_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert DESCRIPTION in " ".join(out.split()) and DESCRIPTION.endswith(".")
    for command in ("serve", "client", "workers", "scale", "size", "demo", "generate", "make-model"):
        assert f"    {command}" in out
    assert "--version" in out and "127.0.0.1" in out


def test_size_takes_a_model_folder(tmp_path, capsys):
    folder = tmp_path / "Qwen3-Next-80B-A3B"
    folder.mkdir()
    shutil.copy(CONFIGS / "qwen3-next-80b-a3b.json", folder / "config.json")
    assert main(["size", "--config", str(folder / "config.json")]) == 0
    from_file = capsys.readouterr().out
    assert main(["size", str(folder)]) == 0
    from_folder = capsys.readouterr().out
    assert from_folder == from_file and "Qwen3-Next-80B-A3B" in from_folder
    assert main(["size", str(tmp_path / "missing")]) == 2
    assert main(["size"]) == 2
    assert "model folder" in capsys.readouterr().err


# ---- --max-tokens-limit --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    """The tiny checkpoint with a 64K context (the router hashes the weights for the model identity)."""
    from tests.helpers.checkpoints import tiny_checkpoint

    folder = tmp_path_factory.mktemp("long") / "tiny-64k"
    shutil.copytree(tiny_checkpoint(), folder, ignore=shutil.ignore_patterns(".baton-identity.json"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 65536}))
    return str(folder)


def _limit_error(router, max_tokens: int) -> str:
    request = public_pb2.GenerateRequest(
        text="hello", sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    )
    try:
        next(router.core.generate(request, ""))
    except Exception as error:  # noqa: BLE001 - the message is what is checked
        return str(error)
    return ""


def test_max_tokens_limit_defaults_to_the_model_context(long_context_model):
    router = start_router(RouterConfig(model=long_context_model, listen="127.0.0.1:0"), StaticPool([], []))
    try:
        assert "exceeds the limit" not in _limit_error(router, 20_000)  # beyond the old fixed 8192
        assert "exceeds the limit 65536" in _limit_error(router, 70_000)
    finally:
        router.stop()


def test_max_tokens_limit_flag(long_context_model):
    args = arg_parser().parse_args(["--model", long_context_model, "--decode", "127.0.0.1:1", "--max-tokens-limit", "1000"])
    config = config_from_args(args)
    assert config.max_tokens_limit == 1000
    router = start_router(
        RouterConfig(model=long_context_model, listen="127.0.0.1:0", max_tokens_limit=1000), StaticPool([], [])
    )
    try:
        assert "exceeds the limit 1000" in _limit_error(router, 2000)
    finally:
        router.stop()


# ---- baton scale progress ------------------------------------------------------------------------
class SlowScaler(admin_pb2_grpc.BatonAdminServicer):
    """Scale takes a while; meanwhile ListWorkers shows the new worker loading, then ready."""

    def __init__(self) -> None:
        self.ready = threading.Event()

    def _workers(self):
        return [
            admin_pb2.WorkerInfo(worker_id="prefill-0", role="prefill", address="127.0.0.1:1", state="ready"),
            admin_pb2.WorkerInfo(worker_id="prefill-1", role="prefill", address="127.0.0.1:2", state="ready" if self.ready.is_set() else "loading"),
            admin_pb2.WorkerInfo(worker_id="decode-0", role="decode", address="127.0.0.1:3", state="ready"),
        ]  # fmt: skip

    def ListWorkers(self, request, context):
        return admin_pb2.ListWorkersResponse(workers=self._workers())

    def Scale(self, request, context):
        time.sleep(1.5)
        self.ready.set()
        return admin_pb2.ScaleResponse(workers=self._workers())


def test_scale_prints_progress_until_ready(monkeypatch, capsys):
    monkeypatch.setattr(scale_command, "PROGRESS_EVERY_S", 0.3)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_BatonAdminServicer_to_server(SlowScaler(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        assert main(["scale", "--router", address, "--prefill", "2", "--decode", "1"]) == 0
    finally:
        server.stop(0)
    out, err = capsys.readouterr()
    progress = [line for line in err.splitlines() if line.startswith("scaling")]
    assert len(progress) >= 2
    assert "prefill 1/2 ready, decode 1/1 ready (prefill-1 loading)" in progress[0]
    assert len(out.splitlines()) == 4 and all(line.split()[3] == "ready" for line in out.splitlines()[1:])
