"""A model folder checked before a worker loads it, so a wrong `--model` is one clear line, not
a traceback from deep inside the loader."""

from __future__ import annotations

from pathlib import Path

from engine.model_config import ModelConfig
from rpc.listen import ListenError


class ModelError(ValueError):
    """The model folder is missing, or its config.json cannot be read as a supported model."""


def check_model_dir(model: str) -> ModelConfig:
    path = Path(model)
    if not path.is_dir():
        raise ModelError(f"model directory {model} does not exist")
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"{model} has no config.json (expected a Hugging Face checkpoint folder)")
    try:
        return ModelConfig.from_json(path)
    except Exception as error:  # noqa: BLE001 - any parse failure is the same operator error
        raise ModelError(f"{config} is not a supported model config: {error}") from error


# What a worker start may fail with because of its input (model folder, listen address): reported
# as one line. Anything else is a bug and keeps its traceback.
STARTUP_ERRORS = (ModelError, ListenError, ValueError, OSError)
