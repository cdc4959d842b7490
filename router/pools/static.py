"""`StaticPool`: workers someone else runs (Kubernetes Deployments, a config file).

Addresses are `host:port` (dialed as is) or `dns:///name:port`, resolved on every `members()` call
(cached for a few seconds) into one member per IP — a Kubernetes headless service lists one A record
per ready pod, so scaling the Deployment is what scales this pool.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

from router.pools.base import Pool, PoolCannotScale, PoolMember, Role

log = logging.getLogger(__name__)
DNS_PREFIX = "dns:///"
DNS_CACHE_S = 5.0

Resolver = Callable[[str, int], list[str]]


def resolve_ips(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_dns_target(target: str) -> tuple[str, int]:
    name = target[len(DNS_PREFIX) :]
    host, sep, port = name.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad worker address {target!r}: expected dns:///NAME:PORT")
    return host.strip("[]"), int(port)


def check_address(address: str) -> str:
    if address.startswith(DNS_PREFIX):
        split_dns_target(address)
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad worker address {address!r}: expected HOST:PORT or dns:///NAME:PORT")
    return address


class StaticPool(Pool):
    can_scale = False

    def __init__(
        self,
        prefill_addresses: Sequence[str],
        decode_addresses: Sequence[str],
        *,
        resolver: Resolver = resolve_ips,
        cache_s: float = DNS_CACHE_S,
    ) -> None:
        self._targets: list[tuple[str, Role]] = [(check_address(a), "prefill") for a in prefill_addresses]
        self._targets += [(check_address(a), "decode") for a in decode_addresses]
        self._resolver = resolver
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._resolved: dict[str, tuple[float, list[str]]] = {}  # target -> (when, addresses)

    def start(self, prefill: int = 0, decode: int = 0) -> None:
        """Nothing to start; the counts are only checked against what is configured."""
        have = {role: sum(1 for _, r in self._targets if r == role) for role in ("prefill", "decode")}
        if (prefill and not have["prefill"]) or (decode and not have["decode"]):
            raise PoolCannotScale(f"static pool has {have} configured targets; it cannot start workers")

    def members(self) -> list[PoolMember]:
        members: list[PoolMember] = []
        seen: set[str] = set()
        for target, role in self._targets:
            for address in self._addresses(target):
                if address not in seen:
                    seen.add(address)
                    members.append(PoolMember(address, role))
        return members

    def add(self, role: Role) -> PoolMember:
        raise PoolCannotScale("this router uses a static worker pool: scale the worker Deployments instead")

    def remove(self, key: str) -> None:
        raise PoolCannotScale("this router uses a static worker pool: scale the worker Deployments instead")

    def close(self) -> None:
        pass

    def _addresses(self, target: str) -> list[str]:
        if not target.startswith(DNS_PREFIX):
            return [target]
        now = time.monotonic()
        with self._lock:
            cached = self._resolved.get(target)
        if cached and now - cached[0] < self._cache_s:
            return cached[1]
        host, port = split_dns_target(target)
        try:
            addresses = [join_host_port(ip, port) for ip in self._resolver(host, port)]
        except OSError as error:
            # Keep the last answer: a DNS blip must not empty the pool.
            log.warning(
                "resolving %s failed (%s); keeping %d cached addresses",
                target,
                error,
                len(cached[1]) if cached else 0,
            )
            addresses = cached[1] if cached else []
        with self._lock:
            self._resolved[target] = (now, addresses)
        return addresses
