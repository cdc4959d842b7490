"""`ModelConfig`: the runtime's view of a Hugging Face `config.json` — `engine.hf_config.TextConfig`
(the torch-free parse, which documents the supported model types and defaults) plus the torch
dtypes of the weights and of the recurrent state."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from engine.hf_config import (
    LAYER_KINDS,
    TEXT_MODEL_TYPES,
    WRAPPER_MODEL_TYPES,
    ConfigError,
    QuantConfig,
    TextConfig,
    canonical_dtype,
    parse_config,
)

__all__ = [
    "LAYER_KINDS",
    "TEXT_MODEL_TYPES",
    "WRAPPER_MODEL_TYPES",
    "ConfigError",
    "ModelConfig",
    "QuantConfig",
    "parse_dtype",
    "read_config_json",
]

_TORCH_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float8_e4m3fn": torch.float8_e4m3fn,
}


def parse_dtype(name: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """`"bfloat16"` / `"torch.bfloat16"` / a torch dtype → torch dtype; None → `default`."""
    if name is None:
        return default
    if isinstance(name, torch.dtype):
        return name
    try:
        canonical = canonical_dtype(str(name))
    except ConfigError as error:
        raise ValueError(str(error)) from None
    if canonical not in _TORCH_DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(_TORCH_DTYPES)}")
    return _TORCH_DTYPES[canonical]


def read_config_json(source: str | Path) -> dict[str, Any]:
    """The dict of `config.json` (path to the file or to its directory)."""
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    return json.loads(path.read_text())


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig(TextConfig):
    dtype: torch.dtype
    mamba_ssm_dtype: torch.dtype

    @classmethod
    def from_json(cls, source: str | Path | dict[str, Any]) -> ModelConfig:
        """Parse a `config.json` (path to the file, to its directory, or the dict itself)."""
        raw = source if isinstance(source, dict) else read_config_json(source)
        return cls.from_text_config(parse_config(raw))

    @classmethod
    def from_text_config(cls, text: TextConfig) -> ModelConfig:
        values = {f.name: getattr(text, f.name) for f in fields(TextConfig)}
        return cls(
            **values,
            dtype=_TORCH_DTYPES[text.dtype_name],
            mamba_ssm_dtype=_TORCH_DTYPES[text.mamba_ssm_dtype_name],
        )
