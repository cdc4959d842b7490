"""The engine's command-line flags, defined once from `dataclasses.fields(EngineConfig)`.

Every entry point that starts an engine (`python -m prefill_worker`, `python -m decode_worker`,
the Ray actors through the same argv, `baton serve`) calls `add_engine_flags` and
`engine_config_from_args`, so a new `EngineConfig` field becomes a flag everywhere at once. A field
gets `--field-name` unless `RENAMED` gives it a shorter or unit-converting flag. Flags that are not
given stay unset, so a caller's `defaults` (or the dataclass default) apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.engine_config import EngineConfig

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class EngineFlag:
    field: str  # the EngineConfig field
    names: tuple[str, ...]  # option strings, the first is the one we print and pass on
    kind: type  # int | float | str | bool (bool: --x / --no-x)
    help: str
    to_field: Callable[[Any], Any] = lambda value: value  # flag value -> field value
    to_flag: Callable[[Any], Any] = lambda value: value  # field value -> flag value

    @property
    def dest(self) -> str:
        return f"engine__{self.field}"


# Field -> (flag names, help, flag->field, field->flag) where the plain `--field-name` would not do.
RENAMED: dict[str, tuple[tuple[str, ...], Callable[[Any], Any], Callable[[Any], Any]]] = {
    "cache_bytes": (("--memory-gb",), lambda gb: int(float(gb) * GIB), lambda b: b / GIB),
    "num_pages": (("--num-pages", "--max-pages"), lambda v: v, lambda v: v),
    "enable_prefix_cache": (("--prefix-cache",), lambda v: v, lambda v: v),
    "num_speculative_tokens": (("--spec-tokens", "--num-speculative-tokens"), lambda v: v, lambda v: v),
}
HELP: dict[str, str] = {
    "block_size": "tokens per KV page (the prefix cache's granularity)",
    "cache_bytes": "KV pages + state slots budget in GiB (ignored with --num-pages or --gpu-memory-utilization)",
    "num_pages": "KV pages (wins over the memory budget)",
    "num_slots": "live state slots (default: --max-num-seqs)",
    "checkpoint_slots": "state slots the prefix cache owns (default: 4 x --max-num-seqs)",
    "max_num_seqs": "sequences running at once",
    "max_num_batched_tokens": "tokens per engine step (prefill chunks + decodes)",
    "prefill_chunk_size": "prompt tokens per prefill chunk",
    "max_model_len": "longest prompt + output (default: the model's max_position_embeddings)",
    "enable_prefix_cache": "reuse cached prompt prefixes (--no-prefix-cache recomputes every prompt)",
    "checkpoint_every_blocks": "a state checkpoint every K blocks of a long prefill",
    "dtype": "weights and cache dtype, e.g. bfloat16 (default: the checkpoint's)",
    "device": "cpu | cuda | cuda:N",
    "seed": "sampling seed for requests without one",
    "num_speculative_tokens": "MTP draft tokens per step, 0..4 (0 = off)",
    "adaptive_speculation": "per step, draft 0..--spec-tokens tokens, whichever measures fastest",
    "gpu_memory_utilization": (
        "fraction of the GPU's total memory this process may use (weights + cache), like vLLM's; "
        "two processes on one GPU each get their own fraction"
    ),
    "enforce_eager": "never capture CUDA graphs",
    "cuda_graph_bytes": "bytes reserved from the cache budget for CUDA graphs",
    "overlap_schedule": "plan step N+1 while step N runs (default: on for cuda)",
    "fp8_compute": (
        "FP8 checkpoints: auto | dequantize | block (auto: the FP8 block GEMM on GPUs with compute "
        "capability >= 8.9, else dequantize at load)"
    ),
}


def _scalar_type(annotation: Any) -> type:
    """int | None -> int; bool -> bool. Only scalar fields make flags."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if len(args) != 1:
            raise TypeError(f"EngineConfig field type {annotation!r} has no flag form")
        annotation = args[0]
    if annotation not in (int, float, str, bool):
        raise TypeError(f"EngineConfig field type {annotation!r} has no flag form")
    return annotation


def engine_flags() -> tuple[EngineFlag, ...]:
    """One flag per EngineConfig field, in field order."""
    hints = typing.get_type_hints(EngineConfig)
    flags = []
    for f in dataclasses.fields(EngineConfig):
        kind = _scalar_type(hints[f.name])
        names, to_field, to_flag = RENAMED.get(f.name, ((f"--{f.name.replace('_', '-')}",), None, None))
        if f.name == "cache_bytes":
            kind = float
        help_text = HELP.get(f.name, f"EngineConfig.{f.name}")
        flags.append(
            EngineFlag(f.name, names, kind, help_text, to_field or (lambda v: v), to_flag or (lambda v: v))
        )
    return tuple(flags)


def add_engine_flags(
    parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None
) -> argparse._ArgumentGroup:
    """Add every engine flag to `parser`; `defaults` (field values) only change the help text."""
    group = parser.add_argument_group("engine", "options of the worker's engine (EngineConfig)")
    shown = {f.name: f.default for f in dataclasses.fields(EngineConfig)} | dict(defaults or {})
    for flag in engine_flags():
        default = shown[flag.field]
        text = flag.help
        if default is not None:
            text += f" (default: {flag.to_flag(default)})"
        elif "default:" not in text:
            text += " (default: unset)"
        if flag.kind is bool:
            group.add_argument(
                *flag.names, dest=flag.dest, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            metavar = flag.names[0].removeprefix("--").upper().replace("-", "_")
            group.add_argument(
                *flag.names, dest=flag.dest, type=flag.kind, default=None, metavar=metavar, help=text
            )
    return group


def given_engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine fields set on the command line (field units)."""
    out = {}
    for flag in engine_flags():
        value = getattr(args, flag.dest, None)
        if value is not None:
            out[flag.field] = flag.to_field(value)
    return out


def engine_config_from_args(
    args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> EngineConfig:
    """`EngineConfig.from_options(defaults | given flags)`; a bad value raises ValueError."""
    return EngineConfig.from_options(**(dict(defaults or {}) | given_engine_options(args)))


def engine_argv(options: Mapping[str, Any]) -> list[str]:
    """Field values back to flags (what `baton serve` hands every worker)."""
    by_field = {flag.field: flag for flag in engine_flags()}
    argv: list[str] = []
    for name, value in options.items():
        flag = by_field.get(name)
        if flag is None:
            raise ValueError(f"unknown engine option {name!r}")
        if value is None:
            continue
        if flag.kind is bool:
            argv.append(flag.names[0] if value else "--no-" + flag.names[0].removeprefix("--"))
        else:
            argv += [flag.names[0], str(flag.to_flag(value))]
    return argv


def effective_options(config: EngineConfig) -> dict[str, Any]:
    """Every field's value (for the worker's info reply)."""
    return dataclasses.asdict(config)
