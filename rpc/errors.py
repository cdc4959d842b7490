"""One mapping from failures to gRPC status codes, so every server answers the same way."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Iterator

import grpc

from engine.cache.page_pool import OutOfPages
from engine.cache.state_pool import OutOfSlots

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    """Nothing can serve this now (no worker, a failed transfer): UNAVAILABLE, the client may retry."""


class TransferFailed(ServiceUnavailable):
    pass


class NotFound(KeyError):
    """An unknown request, worker, model or session: NOT_FOUND."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "not found"


class AdmissionRejected(RuntimeError):
    """The worker is full (RESOURCE_EXHAUSTED) or draining (UNAVAILABLE)."""

    def __init__(self, message: str, draining: bool = False, retry_after_ms: int = 200) -> None:
        super().__init__(message)
        self.draining = draining
        self.retry_after_ms = retry_after_ms


class PermissionDenied(RuntimeError):
    pass


class Unauthenticated(RuntimeError):
    pass


def _out_of_memory(error: BaseException) -> bool:
    """The engine is full (no page or state slot left): the request may succeed later."""
    return isinstance(error, OutOfPages | OutOfSlots)


# Codes an upstream (worker) failure keeps when it reaches a client; anything else is UNAVAILABLE.
FORWARDED_CODES = {
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DEFAULT_RETRY_AFTER_MS = 200
DRAINING_KEY = "baton-draining"  # trailing metadata of an UNAVAILABLE that means "draining"


def retry_after_ms(error: grpc.RpcError, default: int = DEFAULT_RETRY_AFTER_MS) -> int:
    """The `retry-after-ms` trailing metadata of a failed call, if it carries one."""
    try:
        metadata = dict(error.trailing_metadata() or ())
        return int(metadata.get("retry-after-ms", default))
    except (AttributeError, TypeError, ValueError):
        return default


def status_for(error: BaseException) -> grpc.StatusCode:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        code = error.code()
        return code if code in FORWARDED_CODES else grpc.StatusCode.UNAVAILABLE
    if _out_of_memory(error):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
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
    except Exception as error:  # noqa: BLE001 - every failure becomes a status
        if _already_aborted(context):
            raise  # context.abort() inside the handler: its status stands
        code = status_for(error)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("internal error")
        trailers = []
        hint = retry_hint_ms(error, code)
        if hint is not None:
            trailers.append(("retry-after-ms", str(hint)))
        if isinstance(error, AdmissionRejected) and error.draining:
            trailers.append((DRAINING_KEY, "1"))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        context.abort(code, status_message(error, code))


def is_draining_refusal(error: grpc.RpcError) -> bool:
    """The callee refused because it is draining (it is alive: route elsewhere, do not mark it down)."""
    try:
        return dict(error.trailing_metadata() or ()).get(DRAINING_KEY) == "1"
    except (AttributeError, TypeError):
        return False


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = getattr(context, "code", None)
    return callable(code) and code() not in (None, grpc.StatusCode.OK)


def retry_hint_ms(error: BaseException, code: grpc.StatusCode) -> int | None:
    if isinstance(error, AdmissionRejected):
        return error.retry_after_ms
    if isinstance(error, grpc.RpcError):
        return retry_after_ms(error) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    return DEFAULT_RETRY_AFTER_MS if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None


def status_message(error: BaseException, code: grpc.StatusCode) -> str:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "details", None)):
        return f"upstream {error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}" if code == grpc.StatusCode.INTERNAL else str(error)
