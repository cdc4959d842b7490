"""`baton workers --router ADDR`: the router's workers (admin `ListWorkers`) as a table. Also the
admin-client helpers `baton scale` shares.

Generated protobuf modules are imported when a command runs, not when `baton` builds its parser."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from baton_pb.v1 import admin_pb2

COLUMNS = ("role", "id", "address", "state", "running", "free pages", "hit rate")


def add_router_flags(parser: argparse.ArgumentParser, default: str = "127.0.0.1:50052") -> None:
    parser.add_argument(
        "--router", default=default, help=f"router (admin) address host:port (default {default})"
    )
    parser.add_argument(
        "--token", default=os.environ.get("BATON_TOKEN", ""), help="bearer token (default $BATON_TOKEN)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="RPC deadline in seconds")


def open_channel(address: str) -> grpc.Channel:
    from rpc.grpc_server import insecure_or_tls_channel  # lazy: CLI startup
    from rpc.tls import TlsConfig  # lazy: CLI startup

    return insecure_or_tls_channel(address, TlsConfig.from_env())


def call_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def report_rpc_error(error: grpc.RpcError) -> int:
    print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1


def worker_rows(workers: Iterable[admin_pb2.WorkerInfo]) -> list[tuple[str, ...]]:
    rows = []
    for w in sorted(workers, key=lambda w: (w.role, w.worker_id)):
        rows.append(
            (
                w.role,
                w.worker_id,
                w.address,
                w.state or ("draining" if w.draining else "ready" if w.healthy else "unreachable"),
                str(w.load.running_requests),
                f"{w.load.free_pages}/{w.load.total_pages}",
                f"{w.load.hit_rate:.2f}",
            )
        )
    return rows


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def print_workers(workers: Iterable[admin_pb2.WorkerInfo]) -> None:
    print(format_table(COLUMNS, worker_rows(workers)))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "workers", help="list a running router's workers and their state (ready/loading/draining/unreachable)"
    )
    add_router_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from baton_pb.v1 import admin_pb2, admin_pb2_grpc  # lazy: CLI startup

    with open_channel(args.router) as channel:
        try:
            reply = admin_pb2_grpc.BatonAdminStub(channel).ListWorkers(
                admin_pb2.ListWorkersRequest(), timeout=args.timeout, metadata=call_metadata(args.token)
            )
        except grpc.RpcError as error:
            return report_rpc_error(error)
    print_workers(reply.workers)
    return 0
