"""One mapping from failures to gRPC status codes, so every server answers the same way."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Iterator

import grpc

from serving.worker_core import AdmissionRejected

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """Nothing can serve this now (no worker, a failed transfer): UNAVAILABLE, the client may retry."""


class TransferFailed(ServiceUnavailable):
    pass


class NotFound(KeyError):
    """An unknown request, worker, model or session: NOT_FOUND."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "not found"


UnknownRequest = NotFound


class PermissionDenied(RuntimeError):
    pass


class Unauthenticated(RuntimeError):
    pass


def status_for(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, AdmissionRejected):
        return grpc.StatusCode.UNAVAILABLE if error.draining else grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, TimeoutError | concurrent.futures.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, ServiceUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


@contextlib.contextmanager
def grpc_errors(context: grpc.ServicerContext) -> Iterator[None]:
    """Turns exceptions raised inside a handler into a status with a message (never a crash)."""
    try:
        yield
    except grpc.RpcError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes a status
        code = status_for(error)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        if isinstance(error, AdmissionRejected):
            context.set_trailing_metadata((("retry-after-ms", str(error.retry_after_ms)),))
        context.abort(code, f"{type(error).__name__}: {error}" if code == grpc.StatusCode.INTERNAL else str(error))
