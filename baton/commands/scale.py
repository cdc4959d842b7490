"""`baton scale --router ADDR --prefill N --decode M`: resize a running router's worker pools (admin
`Scale`; extra workers are drained before they stop), then print the workers."""

from __future__ import annotations

import argparse

import grpc

from baton.commands.workers import (
    add_router_flags,
    call_metadata,
    open_channel,
    print_workers,
    report_rpc_error,
)


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
        try:
            reply = admin_pb2_grpc.BatonAdminStub(channel).Scale(
                request, timeout=args.timeout, metadata=call_metadata(args.token)
            )
        except grpc.RpcError as error:
            return report_rpc_error(error)
    print_workers(reply.workers)
    return 0
