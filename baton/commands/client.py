"""`baton client --router ADDR --prompt TEXT`: send one `Generate` call, print the text as it streams,
then usage and the route taken. Exits 1 with the gRPC status on an error."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import grpc

from baton.commands.workers import add_router_flags, call_metadata, open_channel, report_rpc_error
from baton.sampling_flags import add_sampling_flags, sampling_options

if TYPE_CHECKING:
    from baton_pb.v1 import common_pb2, public_pb2


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("client", help="send a prompt to a running router and stream the answer")
    add_router_flags(parser)
    parser.set_defaults(timeout=600.0)
    parser.add_argument("--prompt", required=True, help="prompt text (the user message with --chat)")
    parser.add_argument(
        "--chat", action="store_true", help="send as a chat message (the model's chat template)"
    )
    parser.add_argument(
        "--template-kwargs",
        type=json_object,
        default=None,
        help='--chat: chat-template kwargs as a JSON object, e.g. \'{"enable_thinking": false}\'',
    )
    parser.add_argument("--session", default="", help="agent session id (routing affinity across turns)")
    add_sampling_flags(parser, types={"max_tokens": positive})  # unset: the router's defaults
    parser.add_argument("--tenant", default="", help="cache namespace (bound to the token when auth is on)")
    parser.add_argument("--request-id", default="")
    parser.add_argument("--explain", action="store_true", help="print the routing score table")
    parser.set_defaults(func=run)


def request_from_args(args: argparse.Namespace) -> public_pb2.GenerateRequest:
    from baton_pb.v1 import common_pb2, public_pb2  # lazy: CLI startup

    sampling = common_pb2.SamplingParams()
    for name, value in sampling_options(args).items():
        setattr(sampling, name, value)
    request = public_pb2.GenerateRequest(
        request_id=args.request_id, session_id=args.session, tenant=args.tenant, sampling=sampling,
        explain=args.explain,
    )  # fmt: skip
    if args.chat:
        request.chat.messages.add(role="user", content=args.prompt)
        if args.template_kwargs:
            request.chat.template_kwargs_json = json.dumps(args.template_kwargs)
    else:
        request.text = args.prompt
    return request


def run(args: argparse.Namespace) -> int:
    from baton_pb.v1 import public_pb2_grpc  # lazy: CLI startup

    request = request_from_args(args)
    usage, route, finish_reason = None, None, ""
    with open_channel(args.router) as channel:
        stream = public_pb2_grpc.BatonStub(channel).Generate(
            request, timeout=args.timeout, metadata=call_metadata(args.token)
        )
        try:
            for message in stream:
                if message.HasField("route"):
                    route = message.route
                if message.text:
                    sys.stdout.write(message.text)
                    sys.stdout.flush()
                if message.HasField("usage"):
                    usage = message.usage
                finish_reason = message.finish_reason or finish_reason
        except grpc.RpcError as error:
            sys.stdout.write("\n")
            return report_rpc_error(error)
        except KeyboardInterrupt:
            stream.cancel()  # the router aborts the request on both workers
            print("\n[cancelled]", file=sys.stderr)
            return 130
    sys.stdout.write("\n")
    print(summary(usage, route, finish_reason), file=sys.stderr)
    if route is not None and route.explain:
        print(route.explain, file=sys.stderr)
    return 0


def summary(usage: common_pb2.Usage | None, route: public_pb2.RouteInfo | None, finish_reason: str) -> str:
    parts = [f"finish={finish_reason or '?'}"]
    if usage is not None:
        parts.append(
            f"prompt={usage.prompt_tokens} cached={usage.cached_tokens} fetched={usage.fetched_tokens} "
            f"completion={usage.completion_tokens}"
        )
    if route is not None:
        prefill = route.prefill_worker or "(decode worker, local prefill)"
        parts.append(f"route: prefill={prefill} decode={route.decode_worker} ({route.reason})")
    return "[" + " | ".join(parts) + "]"
