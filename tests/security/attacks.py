"""What a stranger on the network does to a worker, standalone (it needs nothing of Baton's but
the generated protos): call every worker RPC, and speak the transfer wire protocol with forged
frames (no secret, random KV, `"checksum": null`)."""

from __future__ import annotations

import json
import os
import socket
import struct

import grpc

from baton_pb.v1 import common_pb2, worker_pb2, worker_pb2_grpc

HEADER = struct.Struct("!4sI")
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def worker_request(request_id: str, prompt: list[int], salt: str) -> worker_pb2.WorkerRequest:
    sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    return worker_pb2.WorkerRequest(
        request_id=request_id, prompt_token_ids=prompt, sampling=sampling, cache_salt=salt
    )


def every_worker_call(channel: grpc.Channel, salt: str, prompt: list[int]) -> dict:
    """name -> a thunk that makes the call (streams are read to their first message)."""
    control = worker_pb2_grpc.WorkerControlStub(channel)
    decode = worker_pb2_grpc.DecodeServiceStub(channel)
    prefill = worker_pb2_grpc.PrefillServiceStub(channel)
    request = worker_request("attack", prompt, salt)
    first = lambda stream: next(iter(stream))  # noqa: E731
    return {
        "GetLoad": lambda md: control.GetLoad(worker_pb2.GetLoadRequest(), timeout=10, metadata=md),
        "Abort": lambda md: control.Abort(worker_pb2.WorkerAbortRequest(request_id="x"), timeout=10, metadata=md),
        "Drain": lambda md: control.Drain(worker_pb2.WorkerDrainRequest(), timeout=10, metadata=md),
        "SubscribeKvEvents": lambda md: first(
            control.SubscribeKvEvents(worker_pb2.SubscribeKvEventsRequest(), timeout=10, metadata=md)
        ),
        "ExposePrefix": lambda md: control.ExposePrefix(
            worker_pb2.ExposePrefixRequest(token_ids=prompt, cache_salt=salt, blocks=2, deadline_s=5),
            timeout=10,
            metadata=md,
        ),
        "ReleaseExposed": lambda md: control.ReleaseExposed(
            worker_pb2.ReleaseExposedRequest(transfer_id="x"), timeout=10, metadata=md
        ),
        "Reserve": lambda md: decode.Reserve(
            worker_pb2.ReserveRequest(request=request, transfer_id="attack-t", deadline_s=1e9),
            timeout=10,
            metadata=md,
        ),
        "Decode": lambda md: first(
            decode.Decode(worker_pb2.DecodeRequest(request_id="attack"), timeout=10, metadata=md)
        ),
        "Generate": lambda md: first(
            decode.Generate(worker_pb2.WorkerGenerateRequest(request=request), timeout=10, metadata=md)
        ),
        "CancelReservation": lambda md: decode.CancelReservation(
            worker_pb2.CancelReservationRequest(request_id="victim"), timeout=10, metadata=md
        ),
        "Prefill": lambda md: prefill.Prefill(worker_pb2.PrefillRequest(request=request), timeout=10, metadata=md),
        "PrefillStream": lambda md: first(
            prefill.PrefillStream(worker_pb2.PrefillRequest(request=request), timeout=10, metadata=md)
        ),
    }


def refusal_code(call, metadata: tuple) -> grpc.StatusCode | None:
    """The status a call ended with, or None if it went through."""
    try:
        call(metadata)
    except grpc.RpcError as error:
        return error.code()
    return None


def frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode()
    return HEADER.pack(b"BKV1", len(body)) + body


def forge_transfer(address: str, transfer_id: str, layouts: dict, secret: str | None = None) -> None:
    """Open `transfer_id` (with `secret`, or none), write random bytes into every unit of every
    layer the descriptor names, and finish with a manifest whose checksums are null."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        opening = {"kind": "open", "transfer_id": transfer_id}
        if secret is not None:
            opening["secret"] = secret
        entries = []
        try:
            sock.sendall(frame(opening))
            for name, (layout, units) in layouts.items():
                unit_bytes = _unit_bytes(layout)
                for layer in range(layout.num_layers):
                    sock.sendall(frame({"kind": "data", "region": name, "layer": layer, "runs": [[0, len(units)]]}))
                    sock.sendall(os.urandom(unit_bytes * len(units)))
                    entries.append(
                        {"region": name, "layer": layer, "positions": [[0, len(units)]],
                         "num_bytes": unit_bytes * len(units), "checksum": None}
                    )  # fmt: skip
            manifest = {
                "layouts": {n: _layout_dict(lay) for n, (lay, _) in layouts.items()},
                "entries": entries,
                "first_token": 1,
                "extras": {},
            }
            sock.sendall(frame({"kind": "finish", "manifest": manifest}))
            sock.recv(1)
        except OSError:
            pass  # the worker hung up on us


def _unit_bytes(layout) -> int:
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
    n = 1
    for d in layout.unit_shape:
        n *= d
    return n * sizes.get(layout.dtype, 4)


def _layout_dict(layout) -> dict:
    return {
        "dtype": layout.dtype,
        "num_layers": layout.num_layers,
        "num_units": layout.num_units,
        "unit_shape": list(layout.unit_shape),
    }
