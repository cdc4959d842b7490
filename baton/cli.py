"""`baton` command line. Each subcommand lives in its own module under `baton/commands/` and
exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pkgutil
import sys

import baton.commands
from rpc.logs import quiet_grpc_core

quiet_grpc_core()  # commands import gRPC later (build_parser); its C core stays off stderr

DESCRIPTION = (
    "Baton: disaggregated prefill/decode serving for hybrid-attention LLMs (Qwen3.5 / Qwen3-Next)."
)
EPILOG = """examples:
  baton serve --model DIR --prefill 1 --decode 1    router + workers on this machine (loopback)
  baton client --prompt "hello"                      one request to a running router
  baton workers                                      workers and their state (admin listener)
  baton scale --prefill 2 --decode 2                 resize the pools, with progress
  baton size MODEL_DIR                               memory per session and sessions per GPU

Listeners default to 127.0.0.1; beyond loopback needs auth or --insecure. `baton COMMAND --help`
shows a command's flags. Environment: BATON_AUTH_TOKENS, BATON_TOKEN, BATON_TLS_*,
BATON_LOG_LEVEL, BATON_LOG_FORMAT (json | text)."""


def version() -> str:
    try:
        return importlib.metadata.version("baton")
    except importlib.metadata.PackageNotFoundError:  # a checkout without an install
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baton", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"baton {version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(baton.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"baton.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
