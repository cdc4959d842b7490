"""`baton scale --router ADDR --prefill N --decode M`: resize a running router's worker pools (admin
`Scale`; extra workers are drained before they stop). While it runs, a progress line every few
seconds (ready workers per role, the ones still loading or draining); then the workers."""

from __future__ import annotations

import argparse
import sys
import threading
import time

import grpc

from baton.commands.workers import (
    add_router_flags,
    call_metadata,
    open_channel,
    print_workers,
    report_rpc_error,
)

PROGRESS_EVERY_S = 2.0


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scale", help="scale a running router's prefill and decode pools")
    add_router_flags(parser)
    parser.set_defaults(timeout=600.0)  # adding workers loads models; draining waits for streams
    parser.add_argument("--prefill", type=non_negative, required=True, help="target prefill workers")
    parser.add_argument("--decode", type=non_negative, required=True, help="target decode workers")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from baton_pb.v1 import admin_pb2, admin_pb2_grpc  # lazy: CLI startup

    request = admin_pb2.ScaleRequest(prefill=args.prefill, decode=args.decode)
    with open_channel(args.router) as channel:
        stub = admin_pb2_grpc.BatonAdminStub(channel)
        metadata = call_metadata(args.token)
        call = stub.Scale.future(request, timeout=args.timeout, metadata=metadata)
        started = time.monotonic()
        while not _wait(call, PROGRESS_EVERY_S):
            _print_progress(stub, metadata, args, time.monotonic() - started)
        try:
            reply = call.result()
        except grpc.RpcError as error:
            return report_rpc_error(error)
    print_workers(reply.workers)
    return 0


def _wait(call, seconds: float) -> bool:
    done = threading.Event()
    call.add_done_callback(lambda _: done.set())
    return done.wait(seconds)


def _print_progress(stub, metadata, args: argparse.Namespace, elapsed_s: float) -> None:
    """One line on stderr while Scale runs: ready workers per role against the targets."""
    from baton_pb.v1 import admin_pb2  # lazy: CLI startup

    try:
        workers = stub.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=5, metadata=metadata).workers
    except grpc.RpcError:
        workers = []
    ready = {role: sum(1 for w in workers if w.role == role and w.state == "ready") for role in ("prefill", "decode")}
    others = sorted(f"{w.worker_id} {w.state}" for w in workers if w.state not in ("ready", ""))
    detail = f" ({', '.join(others)})" if others else ""
    print(
        f"scaling ... {elapsed_s:4.0f} s: prefill {ready['prefill']}/{args.prefill} ready, "
        f"decode {ready['decode']}/{args.decode} ready{detail}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
