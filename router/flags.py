"""The router's listening and limit flags, defined once for `python -m router` and `baton serve`."""

from __future__ import annotations

import argparse

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:50052"
DEFAULT_METRICS_PORT = 9100


def add_listen_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN,
        help=f"public gRPC host:port (default {DEFAULT_LISTEN}; 0.0.0.0:PORT needs auth or --insecure)",
    )  # fmt: skip
    parser.add_argument(
        "--admin-listen", default=DEFAULT_ADMIN_LISTEN,
        help=f"admin gRPC host:port (Scale, Drain, ListWorkers; default {DEFAULT_ADMIN_LISTEN}); "
        "'' = none. On the public port admin RPCs need an admin token",
    )  # fmt: skip
    parser.add_argument(
        "--http-listen", default="",
        help="OpenAI-compatible HTTP API on [HOST:]PORT (loopback when no host); off when unset",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
        help=f"Prometheus /metrics on the --listen host (default {DEFAULT_METRICS_PORT}); 0 = off",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="allow listening beyond loopback without authentication (logged as a warning)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens-limit", type=int, default=0,
        help="largest max_tokens a request may ask for (default: the model's context length)",
    )  # fmt: skip
