"""OpenAI's error JSON and the HTTP status of every failure, from the same mapping the gRPC face
uses (`status_for`), so both faces refuse the same things the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from rpc.errors import retry_hint_ms, status_for, status_message

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}


class BadRequest(ValueError):
    """An invalid field: 400 with `param` naming it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    message: str
    type: str
    param: str | None = None
    retry_after_s: int | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def api_error(error: BaseException) -> ApiError:
    code = status_for(error)
    status, kind = HTTP_STATUS.get(code, (500, "server_error"))
    hint_ms = retry_hint_ms(error, code) if status == 429 else None
    retry = max(1, math.ceil(hint_ms / 1000)) if hint_ms is not None else None
    return ApiError(status, status_message(error, code), kind, getattr(error, "param", None), retry)


def plain_error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> ApiError:
    return ApiError(status, message, kind, param)
