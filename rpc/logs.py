"""Structured logs for every Baton process: one JSON object per line, always valid.

Built on python-json-logger, a maintained formatter for the standard `logging` module: every
module (and grpc, Ray) already logs through `logging`, so one formatter on the root handler covers
them all without touching a call site (structlog would want its own logger API everywhere).

Lines about a request carry its `request_id` and `session_id`: the servicer that takes a request
wraps its work in `request_context(...)`, and a filter copies the context variables onto every
record logged meanwhile (in that thread or task). Exceptions become the `exc_info` field, a string
inside the JSON object, never raw multi-line text. `BATON_LOG_FORMAT=text` gives plain lines for
a terminal; `BATON_LOG_LEVEL` sets the level.

gRPC's C core writes plain-text lines of its own to stderr, outside `logging`. Every failure it
reports also reaches Python as an exception that we log (a taken port becomes our `ListenError`),
so the entry points silence it by default (`GRPC_VERBOSITY=NONE`, which gRPC reads when it is
imported, hence `quiet_grpc_core()` before any import); set `GRPC_VERBOSITY=ERROR` to see them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID = contextvars.ContextVar("baton_request_id", default="")
SESSION_ID = contextvars.ContextVar("baton_session_id", default="")
JSON_FIELDS = ("asctime", "levelname", "name", "message")
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


@contextlib.contextmanager
def request_context(request_id: str, session_id: str = "") -> Iterator[None]:
    """Every log line inside this block names the request and its session."""
    request_token = REQUEST_ID.set(request_id)
    session_token = SESSION_ID.set(session_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(request_token)
        SESSION_ID.reset(session_token)


def quiet_grpc_core() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
            record.session_id = SESSION_ID.get()
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        fmt=JSON_FIELDS,
        rename_fields=RENAMED,
        # ASCII escapes: no raw U+2028 / NEL in a line, so every line splitter sees one object.
        json_ensure_ascii=True,
        json_default=str,  # an odd object in `extra` still yields a valid line
    )


def configure_logging(stream=None, level: str | None = None, fmt: str | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one JSON (or text) handler on `stream` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if (fmt or os.environ.get("BATON_LOG_FORMAT", "json")) == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(json_formatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("BATON_LOG_LEVEL", "INFO"))
    return handler
