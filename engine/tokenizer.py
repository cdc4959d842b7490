"""The checkpoint's tokenizer: `tokenizer.json` through the `tokenizers` library, the chat template
(`chat_template.jinja` or `tokenizer_config.json`, rendered as Hugging Face does: engine/chat_template.py),
the end-of-sequence ids, and incremental detokenization for streaming and stop strings. Torch-free:
the router uses it.

`encode_chat` spells control tokens that appear in user input (`<|im_start|>` in a message, a tool
result or a tool definition) as plain text, so only the template's own markers become control
tokens; with no control-token text in the input the ids equal transformers'
`apply_chat_template(tokenize=True)`, and with it they equal `sanitize_control_tokens=True`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HfTokenizer

from engine import chat_template as templates

REPLACEMENT_CHAR = "\ufffd"
# `encode` holds the GIL for its whole run; `encode_batch` releases it (router/tokenize_pool.py has
# the measurement). Above this size a text goes through `encode_batch`, so other threads keep running.
GIL_FREE_ENCODE_CHARS = 4096


class Tokenizer:
    def __init__(
        self,
        tokenizer: HfTokenizer,
        config: dict[str, Any],
        eos_token_ids: tuple[int, ...],
        chat_template: templates.ChatTemplates = None,
    ) -> None:
        self._tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.chat_template = chat_template if chat_template is not None else config.get("chat_template")
        self._added_tokens = [(t.content, t.special) for t in tokenizer.get_added_tokens_decoder().values()]
        self._newline_ids = self.encode("\n")

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        tokenizer = HfTokenizer.from_file(str(path))
        config = _read_json(model_dir / "tokenizer_config.json")
        chat_template = templates.load_chat_templates(model_dir, config)
        return cls(tokenizer, config, _eos_token_ids(model_dir, tokenizer, config), chat_template)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if len(text) < GIL_FREE_ENCODE_CHARS:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return self._tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_as_text(self, text: str) -> list[int]:
        """`text` through normalizer, pre-tokenizer and model only: no added token is matched."""
        if self._tokenizer.normalizer is not None:
            text = self._tokenizer.normalizer.normalize_str(text)
        splits = [text]
        if self._tokenizer.pre_tokenizer is not None:
            splits = [split for split, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        return [token.id for split in splits for token in self._tokenizer.model.tokenize(split)]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The rendered text, exactly as transformers' `apply_chat_template(tokenize=False)`."""
        template = templates.select_template(self.chat_template, tools is not None)
        return templates.render(
            template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self._special_token_strings(),
            template_kwargs=template_kwargs,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
        allow_special_tokens_in_content: bool = False,
    ) -> list[int]:
        """Prompt ids of a chat. Control tokens in the input are encoded as text unless
        `allow_special_tokens_in_content` (then the rendered text is encoded as a whole)."""
        template_kwargs = dict(template_kwargs or {})
        if allow_special_tokens_in_content:
            text = self.apply_chat_template(messages, add_generation_prompt, tools, **template_kwargs)
            return self.encode(text)
        template = templates.select_template(self.chat_template, tools is not None)
        controls = templates.control_tokens(template, self._added_tokens)
        mark = lambda value: templates.mark_control_tokens(value, controls)  # noqa: E731
        text = self.apply_chat_template(mark(messages), add_generation_prompt, mark(tools), **mark(template_kwargs))
        return self._encode_marked(text, controls)

    def _encode_marked(self, text: str, controls: tuple[str, ...]) -> list[int]:
        """Marked control tokens as text (markers dropped), the rest as usual; a lone marker (a
        template split a marked token) still separates the text around it. transformers'
        `encode_marked_chat`, piece by piece."""
        pieces = templates.marked_split_pattern(controls).split(text)
        ids = self.encode(pieces[0])
        for i, piece in enumerate(pieces[1:], start=1):
            if not piece:
                continue
            as_text = i % 2 == 1
            piece_ids = self._encode_piece(piece, as_text)
            if as_text and self.token_to_id(piece) in piece_ids:
                raise ValueError(f"cannot spell {piece!r} as text: the tokenizer makes it from plain text")
            ids += piece_ids
        return ids

    def _encode_piece(self, piece: str, as_text: bool) -> list[int]:
        encode = self.encode_as_text if as_text else self.encode
        # after a newline, as transformers does, so a SentencePiece prefix space is not added mid-chat
        ids = encode("\n" + piece)
        if ids[: len(self._newline_ids)] == self._newline_ids:
            return ids[len(self._newline_ids) :]
        return encode(piece)

    def _special_token_strings(self) -> dict[str, str]:
        """The `*_token` entries of tokenizer_config.json (bos_token, eos_token, ...) as strings."""
        strings = {}
        for key, value in self.config.items():
            if isinstance(value, dict):
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                strings[key] = value
        return strings


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
