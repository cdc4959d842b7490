"""`ucx`: UCX tagged messages through `ucxx`, connected by worker address (see README for UCX_TLS).

Peers connect with `create_from_worker_address(..., endpoint_error_handling=False)`: the fast path
(UCX picks shared memory / CMA zero-copy) but without UCX's own failure detection, so every wait
here carries our deadline. Tags: 0xFFFF_FFFF_0000_0000 is the well-known "open" tag; a transfer's
messages use (channel << 32 | seq), channel random per direction, seq counting messages.
An open message is served only when it names a transfer this backend expects (or a prefix it
exposes) with its secret, by a bounded pool of threads; anything else is dropped unanswered.

Device (cuda) regions: when this UCX has CUDA transports (its `cuda` module is installed, a GPU is
visible and UCX_TLS keeps `cuda_copy`), payloads are sent and received straight from device memory
(UCX picks cuda_ipc / cuda_copy / GPUDirect). Otherwise each payload is staged through a host copy
(tag sends are asynchronous, so the copy of run k+1 overlaps the send of run k). Each side decides
for itself; one message per run either way. Checksums of device regions are computed on the
device (dev64) by both sides, whichever path the bytes took.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import secrets
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from kvtransfer.base import SendHandle, TransferDescriptor, TransferError, TransferResult
from kvtransfer.shared_backend import SharedBackend
from kvtransfer.stream import StreamSendHandle, receive_into, serve_read

os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")

OPEN_TAG = 0xFFFF_FFFF_0000_0000
OPEN_BUFFER_BYTES = 1 << 20
MAX_INFLIGHT = 64
MAX_CONTROL_BYTES = 4 << 20  # control messages after the open message (a manifest)
MAX_SERVING = 128  # threads serving authorized open messages; more wait in the pool's queue
_LEN = struct.Struct("!Q")


def load_ucx() -> Any:
    """The ucxx core module, or TransferError saying why UCX cannot load."""
    try:
        import ucxx._lib.libucxx as ucx_api  # optional: ucxx
    except Exception as exc:  # ImportError, or the bundled libucx failing to load
        raise TransferError(f"UCX library cannot load: {exc}") from exc
    return ucx_api


def _wait(requests: list[Any], deadline_mono: float) -> None:
    spins = 0
    while not all(r.completed for r in requests):
        if time.monotonic() > deadline_mono:
            raise TimeoutError("deadline expired waiting for UCX")
        spins += 1
        time.sleep(0 if spins < 200 else 0.0002)
    for r in requests:
        r.check_error()


def _array(ucx_api: Any, buf: np.ndarray | torch.Tensor) -> Any:
    from ucxx._lib.arr import Array  # optional: ucxx

    if isinstance(buf, torch.Tensor):  # a cuda tensor goes by its __cuda_array_interface__
        return Array(buf.numpy() if buf.device.type == "cpu" else buf)
    return Array(buf)


def tls_allows_cuda(tls: str | None) -> bool:
    """Whether a UCX_TLS value leaves UCX a transport that reads CUDA memory (cuda_copy)."""
    if tls is None or tls.strip() in ("", "all"):
        return True
    names = [n.strip() for n in tls.split(",") if n.strip()]
    if names and names[0].startswith("^"):  # "^a,b": everything except a, b
        excluded = {names[0][1:], *names[1:]}
        return not ({"cuda", "cuda_copy"} & excluded)
    return bool({"cuda", "cuda_copy"} & set(names))


def _has_cuda_module() -> bool:
    """The UCX that ucxx bundles ships CUDA transports as a loadable module (libuct_cuda)."""
    spec = importlib.util.find_spec("libucx")
    roots = list(spec.submodule_search_locations or []) if spec else []
    return any(glob.glob(os.path.join(root, "lib", "ucx", "libuct_cuda.so*")) for root in roots)


def cuda_direct() -> bool:
    """Device memory goes to UCX as it is (no staging)."""
    return torch.cuda.is_available() and tls_allows_cuda(os.environ.get("UCX_TLS")) and _has_cuda_module()


def _on_device(view: torch.Tensor) -> bool:
    return view.device.type != "cpu"


def _staged(view: torch.Tensor) -> torch.Tensor:
    host = torch.empty(view.numel(), dtype=torch.uint8, pin_memory=torch.cuda.is_available())
    host.copy_(view.reshape(-1))
    return host


class UcxLink:
    def __init__(
        self, ucx_api: Any, endpoint: Any, channel: int, deadline_unix_s: float, direct: bool = False
    ) -> None:
        self._api, self._ep, self._channel = ucx_api, endpoint, channel
        self.stages = not direct  # device payloads: staged through host copies unless direct
        self._deadline_mono = time.monotonic() + (deadline_unix_s - time.time())
        self._seq = 0
        self._inflight: list[tuple[Any, Any]] = []  # (request, buffer kept alive until it completes)

    def _tag(self) -> Any:
        tag = self._api.UCXXTag((self._channel << 32) | self._seq)
        self._seq += 1
        return tag

    def _send(self, buffers: list[np.ndarray | torch.Tensor]) -> None:
        """Sends are pipelined: only wait when too many are in flight (source memory is stable)."""
        for b in buffers:
            array = _array(self._api, b)
            self._inflight.append((self._ep.tag_send(array, self._tag()), array))
        if len(self._inflight) > MAX_INFLIGHT:
            half = len(self._inflight) // 2
            _wait([r for r, _ in self._inflight[:half]], self._deadline_mono)
            del self._inflight[:half]

    def flush(self) -> None:
        _wait([r for r, _ in self._inflight], self._deadline_mono)
        self._inflight.clear()

    def send_open(self, msg: dict[str, Any]) -> None:
        body = json.dumps({**msg, "channel": self._channel}).encode()
        if len(body) + _LEN.size > OPEN_BUFFER_BYTES:
            raise TransferError("open message too large")
        buf = np.frombuffer(_LEN.pack(len(body)) + body, dtype=np.uint8).copy()
        _wait([self._ep.tag_send(_array(self._api, buf), self._api.UCXXTag(OPEN_TAG))], self._deadline_mono)

    def send_control(self, msg: dict[str, Any]) -> None:
        if msg["kind"] == "open":
            self.send_open(msg)
            return
        body = np.frombuffer(json.dumps(msg, separators=(",", ":")).encode(), dtype=np.uint8).copy()
        self._send([np.frombuffer(_LEN.pack(len(body)), dtype=np.uint8).copy(), body])

    def send_payloads(self, views: list[torch.Tensor]) -> None:
        if not self.stages and any(_on_device(v) for v in views):
            # UCX reads device memory outside CUDA's stream order: the layer must be computed.
            torch.cuda.default_stream(next(v for v in views if _on_device(v)).device).synchronize()
        buffers = []
        for view in views:
            buffers.append(_staged(view) if self.stages and _on_device(view) else view)
        self._send(buffers)

    def close(self) -> None:
        pass  # endpoints are cached per peer and outlive one transfer


class UcxSource:
    def __init__(self, ucx_api: Any, worker: Any, channel: int, direct: bool = False) -> None:
        self._api, self._worker, self._channel = ucx_api, worker, channel
        self._seq = 0
        self.stages = not direct

    def _recv(self, buffers: list[np.ndarray | torch.Tensor], deadline_mono: float) -> None:
        arrays = [_array(self._api, b) for b in buffers]
        requests = []
        for a in arrays:
            requests.append(self._worker.tag_recv(a, self._api.UCXXTag((self._channel << 32) | self._seq)))
            self._seq += 1
        _wait(requests, deadline_mono)

    def recv_control(self, deadline_mono: float) -> dict[str, Any]:
        head = np.zeros(_LEN.size, dtype=np.uint8)
        self._recv([head], deadline_mono)
        (length,) = _LEN.unpack(head.tobytes())
        if length > MAX_CONTROL_BYTES:
            raise TransferError(f"control message of {length} bytes refused")
        body = np.zeros(length, dtype=np.uint8)
        self._recv([body], deadline_mono)
        return json.loads(body.tobytes())

    def recv_payloads(self, views: list[torch.Tensor], deadline_mono: float) -> None:
        staged = [self.stages and _on_device(v) for v in views]
        buffers = [
            torch.empty(v.numel(), dtype=torch.uint8, pin_memory=torch.cuda.is_available()) if s else v
            for v, s in zip(views, staged, strict=True)
        ]
        self._recv(buffers, deadline_mono)
        for view, buffer, was_staged in zip(views, buffers, staged, strict=True):
            if was_staged:
                view.reshape(-1).copy_(buffer)

    def drain(self) -> None:
        pass  # host-to-device copies above are synchronous


class UcxBackend(SharedBackend):
    name = "ucx"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._api = load_ucx()
        self._context = self._api.UCXContext(feature_flags=(self._api.Feature.TAG, self._api.Feature.WAKEUP))
        self._worker = self._api.UCXWorker(self._context, enable_delayed_submission=True)
        self._worker.start_progress_thread(polling_mode=False)
        self._address = self._worker.address.tobytes()
        self._endpoints: dict[bytes, Any] = {}
        self._ep_lock = threading.Lock()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=MAX_SERVING, thread_name_prefix="ucx-serve")
        self.direct = cuda_direct()
        self._acceptor = threading.Thread(target=self._accept_loop, name="ucx-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> bytes:
        return self._address

    def _endpoint(self, address: bytes) -> Any:
        with self._ep_lock:
            ep = self._endpoints.get(address)
            if ep is None:
                try:
                    peer = self._api.UCXAddress.create_from_buffer(address)
                    ep = self._api.UCXEndpoint.create_from_worker_address(self._worker, peer, False)
                except Exception as exc:
                    raise TransferError(f"cannot reach UCX peer: {exc}") from exc
                self._endpoints[address] = ep
            return ep

    def open_send(self, descriptor: TransferDescriptor) -> SendHandle:
        link = UcxLink(
            self._api, self._endpoint(descriptor.address), _channel(), descriptor.deadline_unix_s, self.direct
        )
        return StreamSendHandle(link, self._require_regions(), descriptor, corrupt=self.corrupt)

    def read(self, descriptor: TransferDescriptor, dst_units_local: dict[str, list[int]]) -> TransferResult:
        local_id = self._open_read(descriptor, dst_units_local)
        reply_channel = _channel()
        try:
            link = UcxLink(
                self._api, self._endpoint(descriptor.address), _channel(), descriptor.deadline_unix_s
            )
            link.send_open(
                {
                    "kind": "read",
                    "transfer_id": descriptor.transfer_id,
                    "secret": descriptor.secret,
                    "dst_units": dst_units_local,
                    "deadline_unix_s": descriptor.deadline_unix_s,
                    "reply_channel": reply_channel,
                    "reply_address": self._address.hex(),
                }
            )
            receive_into(self.book, local_id, UcxSource(self._api, self._worker, reply_channel, self.direct))
        except Exception as exc:
            self.book.fail(local_id, f"read failed: {type(exc).__name__}: {exc}")
        return self._finish_read(local_id)

    def _accept_loop(self) -> None:
        buf = np.zeros(OPEN_BUFFER_BYTES, dtype=np.uint8)
        while not self._stopping:
            request = self._worker.tag_recv(_array(self._api, buf), self._api.UCXXTag(OPEN_TAG))
            while not request.completed and not self._stopping:
                time.sleep(0.001)
            if self._stopping:
                return
            try:
                request.check_error()
                (length,) = _LEN.unpack(buf[: _LEN.size].tobytes())
                msg = json.loads(buf[_LEN.size : _LEN.size + length].tobytes())
            except Exception:
                continue  # a malformed open message: nobody to answer
            if isinstance(msg, dict) and self._authorize(msg):
                self._pool.submit(self._serve, msg)

    def _serve(self, msg: dict[str, Any]) -> None:
        try:
            if msg.get("kind") == "open":
                self.book.begin(msg["transfer_id"], msg.get("secret"))
                receive_into(
                    self.book,
                    msg["transfer_id"],
                    UcxSource(self._api, self._worker, int(msg["channel"]), self.direct),
                )
            elif msg.get("kind") == "read":
                self._serve_read(msg)
        except Exception:
            pass  # unknown id / expired: the sender's own deadline ends it

    def _serve_read(self, request: dict[str, Any]) -> None:
        deadline = float(request["deadline_unix_s"])
        ep = self._endpoint(bytes.fromhex(request["reply_address"]))
        make_link = lambda: UcxLink(self._api, ep, int(request["reply_channel"]), deadline, self.direct)  # noqa: E731
        link = make_link()
        try:
            exposed = self.exposed_units(request["transfer_id"], request.get("secret"))
        except TransferError as exc:
            link.send_control({"kind": "abort", "reason": str(exc)})
            return
        regions = self._require_regions()
        serve_read(
            lambda d: StreamSendHandle(
                link, regions, d, corrupt=self.corrupt, send_open=False
            ),
            regions,
            exposed,
            request,
            self.name,
            deadline,
        )

    def close(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        super().close()
        self._acceptor.join(timeout=2.0)
        self._pool.shutdown(wait=False)
        with self._ep_lock:
            self._endpoints.clear()
        self._worker.cancel_inflight_requests()
        self._worker.stop_progress_thread()


def _channel() -> int:
    return secrets.randbits(31) + 1
