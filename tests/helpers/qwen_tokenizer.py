"""The real Qwen3.5 tokenizer files (tokenizer.json + tokenizer_config.json), written once per test
cache and shared; each test copies them next to the chat template it needs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engine.qwen_tokenizer import write_qwen3_5_tokenizer
from tests.helpers.checkpoints import cache_root

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "chat_templates"
TEMPLATES = {"qwen3_5": FIXTURES / "qwen3_5.jinja", "qwen3_next": FIXTURES / "qwen3_next_instruct.jinja"}


def qwen3_5_tokenizer_files() -> Path:
    final = cache_root() / "qwen3_5-tokenizer-v2"
    if (final / "tokenizer_config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".qwen3_5-tokenizer-", dir=final.parent))
    try:
        write_qwen3_5_tokenizer(staging, model_max_length=262_144)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / "tokenizer_config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def tokenizer_dir_with_template(out: Path, template: str) -> Path:
    """`out` holding the real tokenizer and `template` (a key of TEMPLATES) as chat_template.jinja."""
    out.mkdir(parents=True, exist_ok=True)
    source = qwen3_5_tokenizer_files()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, out / name)
    shutil.copyfile(TEMPLATES[template], out / "chat_template.jinja")
    return out
