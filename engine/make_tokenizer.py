"""A small byte-level BPE tokenizer in the Qwen style, trained offline for random-weight checkpoints.

The pipeline mirrors what `transformers`' Qwen tokenizer classes build (NFC normalizer, Qwen's
pre-tokenization regex, byte-level without its own regex, byte-level decoder), so `tokenizers`
and `AutoTokenizer` encode the same text to the same ids. The training text is Python's own
standard-library source (present on every machine, no download); the result only has to be a
valid, non-trivial tokenizer, not a good one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"
# transformers rebuilds the pre-tokenizer from its tokenizer class, so match the class of each family.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN3_5_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_CORPUS_MODULES = ("json", "argparse", "collections", "email", "logging", "unittest", "http", "asyncio")


def training_corpus(max_bytes: int) -> list[str]:
    """Deterministic text: stdlib sources in sorted order, up to `max_bytes`."""
    stdlib = Path(os.__file__).parent
    texts, total = [], 0
    for module in _CORPUS_MODULES:
        root = stdlib / module
        files = sorted(root.rglob("*.py")) if root.is_dir() else sorted(stdlib.glob(f"{module}.py"))
        for path in files:
            text = path.read_text(encoding="utf-8", errors="ignore")
            texts.append(text)
            total += len(text)
            if total >= max_bytes:
                return texts
    return texts


def build_tokenizer(vocab_size: int, pretokenize_regex: str = QWEN2_PRETOKENIZE_REGEX) -> Tokenizer:
    """Train a byte-level BPE with `vocab_size` entries (specials included, at the end)."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(training_corpus(max_bytes=max(200_000, vocab_size * 400)), trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def write_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, model_max_length: int, tokenizer_class: str = "Qwen2Tokenizer"
) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json; returns the special token ids."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    added = {ids[token]: (token, True) for token in SPECIAL_TOKENS}
    extra = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    config = tokenizer_config(tokenizer_class, added, model_max_length, extra)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ids


def tokenizer_config(
    tokenizer_class: str, added: dict[int, tuple[str, bool]], model_max_length: int, extra: dict | None = None
) -> dict:
    """`tokenizer_config.json` of a ChatML tokenizer; `added` maps token id -> (content, special)."""
    return {
        "tokenizer_class": tokenizer_class,
        "added_tokens_decoder": {
            str(token_id): {
                "content": content,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for token_id, (content, special) in added.items()
        },
        **(extra or {}),
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,  # plain ChatML; a chat_template.jinja beside it takes priority
    }
