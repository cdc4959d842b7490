"""Where servers listen, safely: loopback unless told otherwise, no port sharing, and a clear error
naming the address when a port is taken.

Listening beyond loopback without authentication is refused unless the operator says `--insecure`
(then it is logged as a warning), so a default or a typo never exposes an open service.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost", "ip6-localhost")


class ListenError(RuntimeError):
    """A server cannot listen where asked: the port is taken, or the address is unsafe."""


def split_host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ListenError(f"bad listen address {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dial_host(host: str) -> str:
    """The host a local client dials to reach a server bound on `host` (a wildcard: loopback)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def check_exposure(listen: str, *, authenticated: bool, insecure: bool, what: str) -> None:
    """Refuse `listen` beyond loopback without authentication unless `insecure`; warn when allowed."""
    host, _port = split_host_port(listen)
    if is_loopback(host) or authenticated:
        return
    if not insecure:
        raise ListenError(
            f"{what} would listen on {listen} (beyond loopback) without authentication; "
            "configure auth, listen on 127.0.0.1, or pass --insecure to accept the risk"
        )
    log.warning("%s listens on %s without authentication (--insecure)", what, listen)
