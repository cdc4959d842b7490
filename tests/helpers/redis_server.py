"""A real Redis for tests: a testcontainers `RedisContainer` where a Docker engine answers, else the
`redis-server` binary on a free port in a temp dir. `stop()` / `restart()` keep the same port, so a
test can kill Redis mid-run and bring it back (empty: persistence is off)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

READY_TIMEOUT_S = 10.0


class RedisServer:
    """Use as a context manager or call `start()` / `close()`; `url` is redis://host:port/0."""

    def __init__(self, *, prefer_docker: bool = True) -> None:
        self._prefer_docker = prefer_docker
        self._proc: subprocess.Popen[bytes] | None = None
        self._container = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        if self._prefer_docker and _docker_answers():
            self._start_container()
        else:
            self._dir = tempfile.TemporaryDirectory(prefix="baton-redis-")
            self.port = _free_port()
            self._spawn()
        return self

    def stop(self) -> None:
        """Kill the server (SIGKILL: as abrupt as a crash)."""
        if self._container is not None:
            self._container.get_wrapped_container().kill()
        elif self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None

    def restart(self) -> None:
        """Bring the server back on the same port, empty."""
        if self._container is not None:
            self._container.get_wrapped_container().start()
            self._wait_ready()
        else:
            self.stop()
            self._spawn()

    def close(self) -> None:
        self.stop()
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=2)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `make test` installs it (Debian package redis-server), "
                "or run `apt-get install redis-server`"
            )
        assert self._dir is not None
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--dir",
                self._dir.name,
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _start_container(self) -> None:
        from testcontainers.redis import RedisContainer

        self.port = _free_port()  # pinned, so a restarted container keeps it
        self._container = RedisContainer().with_bind_ports(6379, self.port).start()
        self.host = self._container.get_container_host_ip()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode} on port {self.port}")
            try:
                with self.client() as probe:
                    if probe.ping():
                        return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis on port {self.port} not ready after {READY_TIMEOUT_S}s"
                    ) from None
                time.sleep(0.01)


@contextlib.contextmanager
def redis_server(*, prefer_docker: bool = True) -> Iterator[RedisServer]:
    with RedisServer(prefer_docker=prefer_docker) as server:
        yield server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False
