"""A bounded pool for tokenization and chat-template rendering, so one huge prompt cannot stall the
others.

Measured (tokenizers 0.23, 2-core machine): `Tokenizer.encode` holds the GIL for its whole run (a
Python thread spinning beside a 290 KB encode got ~6% of its free rate), while `encode_batch`
releases it (~46%, the rest being the second core's other load). Two 290 KB encodes on two threads
did not finish sooner than one after the other with either call (load average 15 on 2 cores: no core
was free), so the gain is latency for everyone else, not throughput: with the GIL held a small request
waited 60 s behind a 7.5 MB prompt, with it released 18 ms p50 (bench.serve). `Tokenizer.encode`
therefore encodes large texts through `encode_batch`, and threads are enough: no process pool, no
second copy of the tokenizer. The pool bounds how many large prompts tokenize at once (each costs
~100x its size in memory while it runs: four 7.5 MB prompts took 3.2 GB) and how many wait; beyond
that a request is refused with RESOURCE_EXHAUSTED and a retry hint instead of queueing without bound. Small prompts tokenize inline
on the handler's thread: a pool hop would cost more than the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from rpc.errors import AdmissionRejected

T = TypeVar("T")
INLINE_BELOW_BYTES = 64 * 1024
RETRY_AFTER_MS = 1000


class TokenizePool:
    def __init__(self, threads: int = 4, queue: int = 16, inline_below_bytes: int = INLINE_BELOW_BYTES) -> None:
        if threads < 1 or queue < 0:
            raise ValueError(f"tokenize pool needs threads >= 1 and queue >= 0, got {threads}, {queue}")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenize")
        self._admitted = threading.BoundedSemaphore(threads + queue)
        self._lock = threading.Lock()
        self.inline_below_bytes = inline_below_bytes
        self.active = 0  # large jobs admitted and not finished (running or queued)

    def run(self, work: Callable[[], T], size_bytes: int) -> T:
        """`work()` inline when small, else on a pool thread; raises AdmissionRejected when full."""
        if size_bytes < self.inline_below_bytes:
            return work()
        if not self._admitted.acquire(blocking=False):
            raise AdmissionRejected("too many large prompts are being tokenized", retry_after_ms=RETRY_AFTER_MS)
        with self._lock:
            self.active += 1
        try:
            return self._executor.submit(work).result()
        finally:
            with self._lock:
                self.active -= 1
            self._admitted.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
