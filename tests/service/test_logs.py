"""Logs are one JSON object per line, always valid, whatever ids and messages hold (quotes,
newlines, unicode), with the request and session ids on every line about a request and an
exception as a field, not raw traceback lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from rpc.logs import RequestContextFilter, configure_logging, json_formatter, request_context

ODD = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ['pre"fill-0', "a\nb", "\u2028x\u0085y", '{"k": 1}', "\\", "ключ", "🙂", ""]
)


def _capturing_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestContextFilter())
    logger = logging.getLogger("tests.logs.capture")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


@settings(max_examples=150, deadline=None)
@given(worker_id=ODD, message=ODD, request_id=ODD.filter(bool), session_id=ODD)
def test_every_line_is_one_json_object_with_the_request_ids(worker_id, message, request_id, session_id):
    logger, stream = _capturing_logger()
    logger.info("outside any request: %s", message)
    with request_context(request_id, session_id):
        logger.warning("worker %s says %s", worker_id, message)
        try:
            raise ValueError(message)
        except ValueError:
            logger.exception("step failed for %s", worker_id)
    lines = stream.getvalue().splitlines()  # splits on every line boundary Python knows
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert "request_id" not in records[0]
    assert records[1]["message"] == f"worker {worker_id} says {message}"
    for record in records[1:]:
        assert (record["request_id"], record["session_id"]) == (request_id, session_id)
        assert record["level"] in ("WARNING", "ERROR") and record["logger"] == "tests.logs.capture"
    assert "ValueError" in records[2]["exc_info"] and "Traceback" in records[2]["exc_info"]


def test_configure_logging_makes_the_root_logger_json():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(stream=stream, level="INFO", fmt="json")
        logging.getLogger("engine.loader").info("loaded %d tensors, %.1f / %.1f GB", 3, 1.5, 3.0)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    record = json.loads(stream.getvalue())
    assert record["message"] == "loaded 3 tensors, 1.5 / 3.0 GB" and record["logger"] == "engine.loader"


def test_a_process_crash_is_logged_as_one_json_line():
    code = (
        "from rpc.logs import configure_logging; import logging; configure_logging();"
        "logging.getLogger('x').error('quote \" newline \\n end', extra={'worker_id': 'w\"1'});"
        "raise SystemExit(0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["worker_id"] == 'w"1'
