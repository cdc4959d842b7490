"""The Ray actor that hosts one worker: it runs the role's entry point in its own process, so the
worker's gRPC server lives as long as the actor. The entry point is named by a string
(`prefill_worker:start` / `decode_worker:start`) and imported only inside the actor's process, so
the router never imports worker code. Ray restarts a dead actor (`max_restarts`); the restarted
worker starts with a new epoch, so the index drops what the old one published."""

from __future__ import annotations

import importlib
import os
from typing import Any

import ray

DEFAULT_STARTER = "{role}_worker:start"  # `start(argv) -> running worker`; {role} is filled in


def load_starter(path: str):
    module_name, _, function_name = path.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


class WorkerActor:
    """Wrapped with `ray.remote` by `RayPool` (so importing this module does not import Ray)."""

    def __init__(
        self, role: str, argv: list[str], starter: str = DEFAULT_STARTER, advertise_node_ip: bool = False
    ) -> None:
        self._running = load_starter(starter.format(role=role))(argv)
        self._config = self._running.config
        address = self._running.address
        if advertise_node_ip:
            # Bound on 0.0.0.0: peers on other nodes dial this node's IP, not loopback.
            address = f"{ray.util.get_node_ip_address()}:{address.rsplit(':', 1)[1]}"
        self._address = address

    def address(self) -> str:
        return self._address

    def info(self) -> dict[str, Any]:
        return {
            "worker_id": self._config.worker_id,
            "role": self._config.role,
            "address": self._address,
            "pid": os.getpid(),
        }

    def drain_and_stop(self, timeout_s: float) -> bool:
        return bool(self._running.drain_and_stop(timeout_s))
