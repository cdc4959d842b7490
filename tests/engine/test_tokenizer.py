"""engine.tokenizer against transformers' tokenizer on the tiny checkpoint's files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.tokenizer import IncrementalDecoder, Tokenizer, find_stop
from tests.helpers.checkpoints import tiny_checkpoint

pytestmark = pytest.mark.timeout(120)

TEXTS = ["Hello, world!", "def f(x):\n    return x * 2  # ünïcödé ✓ 你好", "  spaces\t\ttabs\n\nlines"]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Sum 2 and 3."},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Now 4 and 4?"},
]


@pytest.fixture(scope="module")
def model_dir():
    return tiny_checkpoint("qwen3_next")


def test_encode_and_chat_template_match_transformers(model_dir) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(model_dir)
    tokenizer = Tokenizer.from_dir(model_dir)
    for text in TEXTS:
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)
        assert tokenizer.decode(tokenizer.encode(text)) == text
    for add in (True, False):
        ours = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=add)
        theirs = reference.apply_chat_template(MESSAGES, add_generation_prompt=add, tokenize=False)
        assert ours == theirs
    assert tokenizer.eos_token_ids and all(isinstance(i, int) for i in tokenizer.eos_token_ids)


def test_incremental_decode_equals_full_decode(model_dir) -> None:
    tokenizer = Tokenizer.from_dir(model_dir)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.add([token]) for token in ids]
        assert "".join(pieces) == decoder.text == tokenizer.decode(ids)


def test_find_stop_looks_only_at_the_new_tail() -> None:
    assert find_stop("abc STOP def", ("STOP",), new_chars=12) == 4
    assert find_stop("abc STOP def", ("STOP",), new_chars=2) is None  # already seen before
    assert find_stop("xxENDyySTOP", ("STOP", "END"), new_chars=9) == 2


def test_missing_tokenizer_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_importing_the_tokenizer_does_not_import_torch() -> None:
    code = "import sys, engine.tokenizer, engine.sampling_params; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
