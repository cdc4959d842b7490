"""The worker pool interface: where the router's workers come from and how they are scaled.

A pool only starts, lists and stops workers. The router drains a worker (no new sessions, running
streams finish) *before* it calls `remove`, and it learns loads, epochs and health by talking to the
members itself; so a pool knows addresses and roles, nothing else.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

Role = Literal["prefill", "decode"]
ROLES: tuple[Role, ...] = ("prefill", "decode")


class PoolError(RuntimeError):
    """A pool operation failed (a worker did not start, an unknown member, ...)."""


class PoolCannotScale(PoolError):
    """This pool's membership is managed elsewhere (config, Kubernetes): the router answers
    FAILED_PRECONDITION."""


class WorkerStartError(PoolError):
    """A worker exited or did not become healthy in time; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class PoolMember:
    address: str
    role: Role
    worker_id: str = ""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every worker a pool starts is given (the `python -m prefill_worker` flags)."""

    model: str
    transfer: str = "tcp"
    index: str = "embedded"
    block_size: int = 16
    memory_gb: float = 2.0
    metrics: bool = True  # each worker serves /metrics on a free port (reported in ListWorkers)
    extra_args: tuple[str, ...] = ()
    # Flags for one role only, after extra_args (so they win): e.g. ("--tp", "2") on decode alone.
    prefill_args: tuple[str, ...] = ()
    decode_args: tuple[str, ...] = ()
    cluster_token: str = ""  # handed to each worker as BATON_CLUSTER_TOKEN (never on a command line)

    def env(self) -> dict[str, str]:
        """Environment variables every worker gets."""
        return {"BATON_CLUSTER_TOKEN": self.cluster_token} if self.cluster_token else {}

    def argv(
        self,
        worker_id: str,
        *,
        role: str = "",
        listen: str = "127.0.0.1:0",
        ready_file: str = "",
        insecure: bool = False,
    ) -> list[str]:
        """Worker flags (without the program): free ports, our worker id. `insecure`: the worker
        listens beyond loopback without mutual TLS on purpose (a Ray cluster of several nodes)."""
        args = [
            "--model", self.model,
            "--listen", listen,
            "--metrics-port", "any" if self.metrics else "0",
            "--worker-id", worker_id,
            "--transfer", self.transfer,
            "--index", self.index,
            "--block-size", str(self.block_size),
            "--memory-gb", str(self.memory_gb),
        ]  # fmt: skip
        if ready_file:
            args += ["--ready-file", ready_file]
        if insecure:
            args.append("--insecure")
        own = {"prefill": self.prefill_args, "decode": self.decode_args}.get(role, ())
        return args + list(self.extra_args) + list(own)


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"unknown worker role {role!r} (expected one of {', '.join(ROLES)})")
    return role  # type: ignore[return-value]


class Pool(abc.ABC):
    """Workers of both roles. Implementations: `StaticPool`, `ProcessPool`, `RayPool`."""

    can_scale: bool = True

    @abc.abstractmethod
    def start(self, prefill: int, decode: int) -> None:
        """Bring up the initial workers; returns once all of them answer health checks."""

    @abc.abstractmethod
    def members(self) -> list[PoolMember]:
        """The workers now serving (cheap: the router calls it on every poll)."""

    @abc.abstractmethod
    def add(self, role: Role) -> PoolMember:
        """Start one more worker; returns once it answers gRPC health SERVING."""

    @abc.abstractmethod
    def remove(self, key: str) -> None:
        """Stop a (drained) worker, named by worker id or address: graceful stop, then kill."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything this pool started. Idempotent."""

    def starting(self) -> list[PoolMember]:
        """Workers launched but not serving yet (listed as `loading`); address may be empty."""
        return []

    def find(self, key: str) -> PoolMember:
        for member in self.members():
            if key in (member.worker_id, member.address):
                return member
        raise PoolError(f"no worker {key!r} in this pool")

    def count(self, role: Role) -> int:
        return sum(1 for member in self.members() if member.role == role)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
