"""The training corpus: a fixed, sorted list of Python standard-library source files.

Every machine with Python has them, so nothing is downloaded. Their content differs between
Python versions, so the corpus carries a hash of the exact files read (names and bytes); trained
checkpoints are keyed by it and record it. Every tenth file (in sorted order) is held out.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Modules and packages present in every CPython 3.9+; a missing one is skipped (and the hash shows it).
MODULES = (
    "argparse.py", "bisect.py", "calendar.py", "configparser.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "difflib.py", "enum.py", "fractions.py", "functools.py",
    "gettext.py", "glob.py", "gzip.py", "heapq.py", "hmac.py", "ipaddress.py", "numbers.py",
    "operator.py", "optparse.py", "pprint.py", "queue.py", "random.py", "shlex.py", "shutil.py",
    "smtplib.py", "statistics.py", "string.py", "tempfile.py", "textwrap.py", "threading.py",
    "traceback.py", "uuid.py", "warnings.py", "weakref.py", "json", "logging", "http", "urllib",
    "collections", "unittest", "concurrent",
)  # fmt: skip
HELD_OUT_EVERY = 10
_SKIP_DIRS = {"test", "tests", "__pycache__"}


@dataclass(frozen=True, slots=True)
class Corpus:
    train: tuple[str, ...]  # file texts
    held_out: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to the stdlib folder, sorted
    sha256: str
    python: str  # the interpreter version the files came from

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def describe(self) -> str:
        size = sum(len(t) for t in self.train + self.held_out)
        return (
            f"corpus: {len(self.files)} Python {self.python} stdlib files ({size / 1e6:.1f} M chars; "
            f"{len(self.held_out)} held out), sha256 {self.short_hash}"
        )


def stdlib_dir() -> Path:
    return Path(os.__file__).parent


def corpus_files(root: Path | None = None) -> list[Path]:
    """The corpus files under `root` (default: this interpreter's stdlib), sorted."""
    root = root or stdlib_dir()
    files: list[Path] = []
    for name in MODULES:
        path = root / name
        if path.is_dir():
            files.extend(p for p in path.rglob("*.py") if not _SKIP_DIRS & set(p.relative_to(root).parts))
        elif path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(root: Path | None = None) -> Corpus:
    root = root or stdlib_dir()
    files = corpus_files(root)
    if not files:
        raise FileNotFoundError(f"no corpus files under {root}: is this a Python standard library?")
    digest = hashlib.sha256()
    train, held_out, names = [], [], []
    for index, path in enumerate(files):
        data = path.read_bytes()
        name = path.relative_to(root).as_posix()
        digest.update(name.encode() + b"\0" + data + b"\0")
        text = data.decode("utf-8", errors="replace")
        (held_out if index % HELD_OUT_EVERY == HELD_OUT_EVERY // 2 else train).append(text)
        names.append(name)
    python = ".".join(map(str, sys.version_info[:2]))
    return Corpus(tuple(train), tuple(held_out), tuple(names), digest.hexdigest(), python)
