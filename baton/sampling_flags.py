"""The sampling flags of `baton generate` and `baton client`: one per number option of
`SamplingParams` (`engine/sampling_params.py::NUMBER_FIELDS`), `--top-k` for `top_k`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from engine.sampling_params import NUMBER_FIELDS, NUMBER_TYPES

HELP = {"temperature": "0 = greedy", "seed": "same seed, same tokens", "logprobs": "top-N logprobs per token"}


def add_sampling_flags(
    parser: argparse.ArgumentParser,
    defaults: dict[str, Any] | None = None,
    types: dict[str, Callable[[str], Any]] | None = None,
) -> None:
    """Unset flags stay None: the engine's (or the router's) default applies."""
    for name in NUMBER_FIELDS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=(types or {}).get(name, NUMBER_TYPES[name]),
            default=(defaults or {}).get(name),
            help=HELP.get(name),
        )


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling flags that were given (or have a default), by field name."""
    return {name: getattr(args, name) for name in NUMBER_FIELDS if getattr(args, name) is not None}
