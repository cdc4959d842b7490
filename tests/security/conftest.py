"""One secured cluster for the security tests: mutual TLS on the public, admin and internal gRPC
services (`BATON_TLS_CERT/KEY/CA` for the workers and the pool's health checks, `RouterConfig.tls`
for the router), token auth on the router, tight message-size and max_tokens limits."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import grpc
import pytest

from router.config import RouterConfig
from router.local_cluster import ClusterSpec, LocalCluster
from rpc.grpc_server import CHANNEL_OPTIONS, channel_credentials
from rpc.tls import TlsConfig
from tests.chaos.harness import WORKER_ARGS
from tests.security.certs import CertFiles, make_pki

TOKENS = {"alice": "tok-alice-3f9c", "bob": "tok-bob-81d2", "admin": "tok-admin-77aa"}
MAX_PROMPT_BYTES = 64 * 1024
MAX_TOKENS_LIMIT = 64


@pytest.fixture(scope="package")
def pki(tmp_path_factory) -> dict[str, CertFiles]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def tls_environment(files: CertFiles, client_auth: bool = True) -> Iterator[None]:
    """What a deployment sets for every worker (and what the pool's health checks read)."""
    values = {
        "BATON_TLS_CERT": files.cert,
        "BATON_TLS_KEY": files.key,
        "BATON_TLS_CA": files.ca,
        "BATON_TLS_CLIENT_AUTH": "1" if client_auth else "0",
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def plaintext_environment() -> Iterator[None]:
    """No BATON_TLS_* while a plaintext cluster starts (the package's secured cluster sets them)."""
    names = ("BATON_TLS_CERT", "BATON_TLS_KEY", "BATON_TLS_CA", "BATON_TLS_CLIENT_AUTH")
    saved = {name: os.environ.pop(name, None) for name in names}
    try:
        yield
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})


def secure_channel(address: str, files: CertFiles | None, ca: str) -> grpc.Channel:
    """A TLS channel that trusts `ca` and presents `files` as the client certificate (if any)."""
    tls = TlsConfig(cert=files.cert if files else "", key=files.key if files else "", ca=ca)
    return grpc.secure_channel(address, channel_credentials(tls), options=CHANNEL_OPTIONS)


@pytest.fixture(scope="package")
def secured_cluster(tiny_model, pki, tmp_path_factory):
    tokens_file = tmp_path_factory.mktemp("auth") / "tokens"
    tokens_file.write_text(
        "# token tenant role\n"
        f"{TOKENS['alice']} alice user\n{TOKENS['bob']} bob user\n{TOKENS['admin']} ops admin\n"
    )
    service = pki["service"]
    router = RouterConfig(
        model="",
        listen="127.0.0.1:0",
        local_prefill_threshold=0,  # disaggregated: the router dials both workers over TLS
        tls=TlsConfig(cert=service.cert, key=service.key, ca=service.ca),
        auth_tokens_file=str(tokens_file),
        max_prompt_bytes=MAX_PROMPT_BYTES,
        max_tokens_limit=MAX_TOKENS_LIMIT,
    )
    with (
        tls_environment(service),
        LocalCluster(ClusterSpec(tiny_model, worker_args=WORKER_ARGS, router=router)) as cluster,
    ):
        yield cluster


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name]}"),)
