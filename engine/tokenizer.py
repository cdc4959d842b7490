"""The checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library, the chat template
of `tokenizer_config.json` through jinja2 (the way Hugging Face renders it), the end-of-sequence
ids, and incremental detokenization for streaming and stop strings. Torch-free: the router uses it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as HfTokenizer

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    def __init__(
        self, tokenizer: HfTokenizer, config: dict[str, Any], eos_token_ids: tuple[int, ...]
    ) -> None:
        self._tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.chat_template: str | None = config.get("chat_template")
        self._template: jinja2.Template | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        tokenizer = HfTokenizer.from_file(str(path))
        config = _read_json(model_dir / "tokenizer_config.json")
        return cls(tokenizer, config, _eos_token_ids(model_dir, tokenizer, config))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template in tokenizer_config.json")
        if self._template is None:
            self._template = _jinja_environment().from_string(self.chat_template)
        special = {k: v for k, v in self.config.items() if k.endswith("_token") and isinstance(v, str)}
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special, **extra
        )

    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


@dataclass(slots=True)
class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without re-decoding everything: decodes a
    short window before the new tokens and emits only what follows it; holds text back while it ends
    in an incomplete UTF-8 sequence (the replacement character)."""

    tokenizer: Tokenizer
    skip_special_tokens: bool = True
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    _prefix_offset: int = 0
    _read_offset: int = 0

    def add(self, new_token_ids: list[int]) -> str:
        self.token_ids.extend(new_token_ids)
        decode = self.tokenizer.decode
        prefix = decode(self.token_ids[self._prefix_offset : self._read_offset], self.skip_special_tokens)
        full = decode(self.token_ids[self._prefix_offset :], self.skip_special_tokens)
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT_CHAR):
            return ""
        delta = full[len(prefix) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self.token_ids)
        self.text += delta
        return delta


def find_stop(text: str, stops: tuple[str, ...], new_chars: int) -> int | None:
    """Index in `text` where the earliest stop string starts, looking only where the last
    `new_chars` characters could complete one; None when no stop string occurs."""
    best: int | None = None
    for stop in stops:
        begin = max(0, len(text) - new_chars - len(stop) + 1)
        index = text.find(stop, begin)
        if index >= 0 and (best is None or index < best):
            best = index
    return best


def _jinja_environment() -> jinja2.Environment:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open() as f:
        return json.load(f)


def _eos_token_ids(model_dir: Path, tokenizer: HfTokenizer, config: dict[str, Any]) -> tuple[int, ...]:
    """Union of the eos of the tokenizer config, generation_config.json and config.json."""
    ids: list[int] = []
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    if isinstance(eos, str) and tokenizer.token_to_id(eos) is not None:
        ids.append(tokenizer.token_to_id(eos))
    for name in ("generation_config.json", "config.json"):
        data = _read_json(model_dir / name)
        value = data.get("eos_token_id", data.get("text_config", {}).get("eos_token_id"))
        ids.extend(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    return tuple(dict.fromkeys(ids))
