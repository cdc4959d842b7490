"""Waiting in a server's main thread until a signal handler says the process is done."""

from __future__ import annotations

import threading

SIGNAL_POLL_S = 0.2


def wait_in_main_thread(event: threading.Event) -> None:
    """Block until `event` is set, waking every `SIGNAL_POLL_S`. Python runs signal handlers only in
    the main thread, and a signal the kernel delivers to another thread (gRPC's, the engine's) does
    not interrupt the main thread's untimed wait: SIGTERM could then go unhandled until something
    else woke it (a drain test saw health stay SERVING past 10 s)."""
    while not event.wait(SIGNAL_POLL_S):
        pass
