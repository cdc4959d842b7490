"""The operator commands: `baton serve`, `scale`, `workers`, `client` accept their documented flags,
reject bad ones, and (`client`, `workers`, `scale`) speak the right RPCs — checked against an
in-test gRPC server that records what it is sent (it stands in for the router; the commands are
what is under test)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from baton.cli import build_parser, main
from baton.commands.client import request_from_args
from baton.commands.serve import check_args
from baton_pb.v1 import admin_pb2, admin_pb2_grpc, common_pb2, public_pb2, public_pb2_grpc
from router.openai.listen import split_listen

REPO = Path(__file__).resolve().parents[2]
ENGINE_READY = (REPO / "engine" / "llm_engine.py").is_file()


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def rejects(*argv: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2


# ---- serve ---------------------------------------------------------------------------------------
def test_serve_defaults_and_every_documented_flag(tmp_path):
    args = parse("serve", "--model", str(tmp_path), "--prefill", "2", "--decode", "3")
    assert (args.prefill, args.decode, args.pool, args.address) == (2, 3, "ray", None)
    assert args.http_listen == "", "the HTTP API is off unless asked for"
    assert (args.listen, args.admin_listen, args.metrics_port, args.transfer) == (
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        9100,
        "tcp",
    )
    assert (args.insecure, args.startup_timeout, args.max_tokens_limit) == (False, 180.0, 0)
    assert check_args(args) is None
    args = parse(
        "serve", "--model", str(tmp_path), "--prefill", "0", "--decode", "1", "--pool", "ray",
        "--address", "ray://head:10001", "--index", "redis://r:6379/0", "--transfer", "ucx",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-port", "0", "--memory-gb", "0.5",
        "--http-listen", "8000",
        "--insecure", "--startup-timeout", "900", "--max-tokens-limit", "65536",
    )  # fmt: skip
    assert args.http_listen == "8000" and split_listen(args.http_listen) == ("127.0.0.1", 8000)
    assert (args.address, args.index, args.transfer, args.metrics_port) == (
        "ray://head:10001",
        "redis://r:6379/0",
        "ucx",
        0,
    )
    assert check_args(args) is None


@pytest.mark.parametrize(
    "argv",
    [
        ("serve",),  # --model is required
        ("serve", "--model", "m", "--pool", "kubernetes"),
        ("serve", "--model", "m", "--transfer", "rdma"),
        ("serve", "--model", "m", "--prefill", "-1"),
        ("serve", "--model", "m", "--decode", "two"),
    ],
)
def test_serve_rejects_bad_flags(argv):
    rejects(*argv)


def test_serve_rejects_inconsistent_settings_before_starting_anything(tmp_path):
    assert "needs --pool ray" in check_args(
        parse("serve", "--model", str(tmp_path), "--pool", "process", "--address", "a:1")
    )
    assert "--decode must be >= 1" in check_args(parse("serve", "--model", str(tmp_path), "--decode", "0"))
    assert "does not exist" in check_args(parse("serve", "--model", str(tmp_path / "nope")))
    assert "--http-listen wants" in check_args(parse("serve", "--model", str(tmp_path), "--http-listen", "localhost"))
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2


# ---- scale / workers / client flags --------------------------------------------------------------
def test_scale_and_workers_flags():
    args = parse("scale", "--router", "r:50052", "--prefill", "2", "--decode", "0")
    assert (args.router, args.prefill, args.decode) == ("r:50052", 2, 0)
    rejects("scale", "--prefill", "2")  # --decode is required
    rejects("scale", "--prefill", "-1", "--decode", "1")
    assert parse("workers").router == "127.0.0.1:50052"  # the admin listener
    assert parse("workers", "--router", "10.0.0.5:50052", "--token", "t").token == "t"


def test_client_request_carries_the_flags():
    args = parse(
        "client", "--prompt", "hi", "--session", "s1", "--max-tokens", "8", "--temperature", "0",
        "--tenant", "acme", "--token", "tok",
    )  # fmt: skip
    request = request_from_args(args)
    assert (request.text, request.session_id, request.tenant) == ("hi", "s1", "acme")
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0.0
    assert request.sampling.max_tokens == 8
    chat = request_from_args(parse("client", "--prompt", "hi", "--chat"))
    assert chat.WhichOneof("prompt") == "chat" and chat.chat.messages[0].content == "hi"
    assert not chat.sampling.HasField("temperature")  # unset: the router's default, not 0
    assert not chat.sampling.HasField("max_tokens")
    rejects("client")  # --prompt is required
    rejects("client", "--prompt", "x", "--max-tokens", "0")
    no_think = request_from_args(parse("client", "--prompt", "hi", "--chat", "--template-kwargs", '{"enable_thinking": false}'))
    assert no_think.chat.template_kwargs_json == '{"enable_thinking": false}'
    rejects("client", "--prompt", "x", "--chat", "--template-kwargs", "[1]")
    rejects("client", "--prompt", "x", "--chat", "--template-kwargs", "{oops")


def test_make_model_tokenizer_and_chat_template_flags():
    args = parse("make-model", "--out", "/tmp/x", "--tokenizer", "qwen3.5", "--chat-template", "t.jinja")
    assert (args.tokenizer, args.chat_template) == ("qwen3.5", "t.jinja")
    assert parse("make-model", "--out", "/tmp/x").tokenizer == "trained"
    rejects("make-model", "--out", "/tmp/x", "--tokenizer", "gpt2")


def test_make_model_train_preset_flag():
    assert parse("make-model", "--out", "/tmp/x", "--train").train_preset == "demo"
    assert parse("make-model", "--out", "/tmp/x", "--train", "--train-preset", "bench").train_preset == "bench"
    rejects("make-model", "--out", "/tmp/x", "--train", "--train-preset", "huge")


# ---- the commands against a recording server -----------------------------------------------------
class RecordingRouter(public_pb2_grpc.BatonServicer, admin_pb2_grpc.BatonAdminServicer):
    def __init__(self) -> None:
        self.requests: list = []
        self.metadata: list = []
        self.workers = [
            admin_pb2.WorkerInfo(worker_id="prefill-0", role="prefill", address="127.0.0.1:1", state="ready", load=admin_pb2.WorkerLoad(free_pages=7, total_pages=9)),
            admin_pb2.WorkerInfo(worker_id="decode-1", role="decode", address="127.0.0.1:2", draining=True, state="draining", load=admin_pb2.WorkerLoad(running_requests=3, hit_rate=0.5)),
        ]  # fmt: skip

    def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if request.text == "fail":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty")
        yield public_pb2.GenerateResponse(
            text="Hel", route=public_pb2.RouteInfo(decode_worker="decode-1", reason="affinity")
        )
        yield public_pb2.GenerateResponse(
            text="lo",
            finish_reason="stop",
            usage=common_pb2.Usage(prompt_tokens=5, cached_tokens=4, completion_tokens=2),
        )

    def ListWorkers(self, request, context):
        return admin_pb2.ListWorkersResponse(workers=self.workers)

    def Scale(self, request, context):
        self.requests.append(request)
        return admin_pb2.ScaleResponse(workers=self.workers)


@pytest.fixture
def router():
    servicer = RecordingRouter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    public_pb2_grpc.add_BatonServicer_to_server(servicer, server)
    admin_pb2_grpc.add_BatonAdminServicer_to_server(servicer, server)
    servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(0)


@pytest.mark.timeout(30)
def test_client_streams_text_then_usage_and_route(router, capsys):
    assert (
        main(["client", "--router", router.address, "--prompt", "hi", "--session", "s", "--token", "tok"])
        == 0
    )
    out, err = capsys.readouterr()
    assert out == "Hello\n"
    assert "prompt=5 cached=4" in err and "decode=decode-1" in err and "finish=stop" in err
    assert router.requests[0].session_id == "s"
    assert router.metadata[0]["authorization"] == "Bearer tok"


@pytest.mark.timeout(30)
def test_client_exits_non_zero_with_the_status_message(router, capsys):
    assert main(["client", "--router", router.address, "--prompt", "fail"]) == 1
    assert "INVALID_ARGUMENT: prompt is empty" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_client_reports_an_unreachable_router(capsys):
    assert main(["client", "--router", "127.0.0.1:1", "--prompt", "x", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


@pytest.mark.timeout(30)
def test_workers_and_scale_print_the_worker_table(router, capsys):
    assert main(["workers", "--router", router.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "role",
        "id",
        "address",
        "state",
        "running",
        "free",
        "pages",
        "hit",
        "rate",
    ]
    assert lines[1].split() == ["decode", "decode-1", "127.0.0.1:2", "draining", "3", "0/0", "0.50"]
    assert lines[2].split() == ["prefill", "prefill-0", "127.0.0.1:1", "ready", "0", "7/9", "0.00"]
    assert main(["scale", "--router", router.address, "--prefill", "2", "--decode", "3"]) == 0
    assert (router.requests[-1].prefill, router.requests[-1].decode) == (2, 3)
    assert len(capsys.readouterr().out.splitlines()) == 3


# ---- baton serve, for real -----------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.skipif(not ENGINE_READY, reason="engine/llm_engine.py has not landed yet")
@pytest.mark.timeout(240)
def test_serve_runs_answers_and_shuts_down_cleanly(capsys):
    from router.pools.health import is_serving
    from tests.helpers.checkpoints import tiny_checkpoint

    command = [
        sys.executable, "-m", "baton", "serve", "--model", str(tiny_checkpoint()), "--pool", "process",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--metrics-port", "0", "--memory-gb", "0.05",
    ]  # fmt: skip
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    try:
        lines = []
        while not lines or lines[-1] != "Ctrl-C to stop.":
            line = serve.stdout.readline()
            assert line, f"baton serve exited early with {serve.wait()}: {lines}"
            lines.append(line.strip())
        router = lines[0].split()[1]
        admin = next(line.split()[1] for line in lines if line.startswith("admin "))
        workers = [line.split()[2] for line in lines if line.split()[0] in ("prefill", "decode")]
        assert len(workers) == 2 and all(is_serving(address) for address in workers)

        assert (
            main(
                ["client", "--router", router, "--prompt", "hello", "--max-tokens", "4", "--temperature", "0"]
            )
            == 0
        )
        assert "finish=" in capsys.readouterr().err
        assert main(["workers", "--router", admin]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 3
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(60)
    assert code == 0
    assert not any(is_serving(address, timeout_s=0.5) for address in workers)


def test_serve_tp_ep_flags_reach_the_workers_and_bad_ones_are_refused(tmp_path):
    from baton.commands.serve import cluster_spec

    args = parse("serve", "--model", str(tmp_path), "--prefill", "0", "--tp", "2", "--ep", "2")
    assert check_args(args) is None
    worker_args = cluster_spec(args, None).worker_args
    assert worker_args[worker_args.index("--tp") + 1] == "2" and worker_args[worker_args.index("--ep") + 1] == "2"
    plain = cluster_spec(parse("serve", "--model", str(tmp_path), "--prefill", "0"), None).worker_args
    assert "--tp" not in plain and "--ep" not in plain
    assert check_args(parse("serve", "--model", str(tmp_path), "--tp", "2")) is None  # sharded transfer
    bad = parse("serve", "--model", str(tmp_path), "--prefill", "0", "--tp", "2", "--ep", "4")
    assert "each must be 1 or the world size" in check_args(bad)
    # per pool: prefill tp 1 into decode tp 2 (resharded on arrival)
    mixed = parse("serve", "--model", str(tmp_path), "--prefill-tp", "1", "--decode-tp", "2")
    assert check_args(mixed) is None
    spec = cluster_spec(mixed, None)
    assert spec.prefill_args == () and spec.decode_args == ("--tp", "2", "--ep", "1")
    assert "--tp" not in spec.worker_args
    assert "--decode-tp/--decode-ep" in check_args(parse("serve", "--model", str(tmp_path), "--decode-tp", "0"))
