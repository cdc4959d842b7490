"""The internal trust domain: only cluster members may call a worker.

The cluster credential is either or both of:
- a shared **cluster token** (`BATON_CLUSTER_TOKEN`, or a file named by `--cluster-token-file` /
  `BATON_CLUSTER_TOKEN_FILE`), sent as metadata `x-baton-cluster-token` by the router and by
  workers calling each other (prefix fetch);
- under mutual TLS, a client certificate whose subject alternative names include the **internal
  identity**, the URI `spiffe://baton/internal` (`BATON_INTERNAL_IDENTITY` changes it). Issue it
  to the router and the workers only; tenants' client certificates from the same CA lack it.

What a worker port accepts:
- a token is configured: that token, or a certificate with the internal identity;
- no token, mutual TLS on: a certificate with the internal identity;
- neither: everyone, with a warning at start. `baton serve` / `baton demo` always make a random
  token for the workers they start, and the deploy overlays read it from a Secret.
Tenant credentials (bearer tokens of the public API, tenant certificates) are refused. gRPC health
checking and server reflection stay open: they tell liveness and the schema, nothing else.
Transfer ports carry no credential of their own: every transfer is bound to a secret that travels
only inside worker RPCs (see kvtransfer/base.py, `TransferDescriptor.secret`).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

TOKEN_HEADER = "x-baton-cluster-token"
INTERNAL_IDENTITY = "spiffe://baton/internal"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class ClusterCredential:
    token: str = ""
    identity: str = INTERNAL_IDENTITY

    @staticmethod
    def from_env(token_file: str = "") -> ClusterCredential:
        """`token_file` (a flag) wins over `BATON_CLUSTER_TOKEN_FILE`, which wins over the variable."""
        path = token_file or os.environ.get("BATON_CLUSTER_TOKEN_FILE", "")
        try:
            token = Path(path).read_text().strip() if path else os.environ.get("BATON_CLUSTER_TOKEN", "").strip()
        except OSError as error:
            raise ValueError(f"cannot read the cluster token file {path}: {error}") from error
        if path and not token:
            raise ValueError(f"cluster token file {path} is empty")
        identity = os.environ.get("BATON_INTERNAL_IDENTITY", "") or INTERNAL_IDENTITY
        return ClusterCredential(token, identity)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TOKEN_HEADER, self.token),) if self.token else ()


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str


class ClusterAuthInterceptor(grpc.ServerInterceptor):
    """Guards every method of a worker's services except health checking and reflection."""

    def __init__(self, credential: ClusterCredential, mutual_tls: bool) -> None:
        self.credential, self.mutual_tls = credential, mutual_tls

    @property
    def enforced(self) -> bool:
        return bool(self.credential.token) or self.mutual_tls

    def refusal(self, context: grpc.ServicerContext) -> Refusal | None:
        """None for a cluster member; else why the caller is refused."""
        if _has_identity(context, self.credential.identity):
            return None
        offered = dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, "")
        if self.credential.token and offered:
            if hmac.compare_digest(self.credential.token.encode(), str(offered).encode()):
                return None
            return Refusal(grpc.StatusCode.UNAUTHENTICATED, "invalid cluster token")
        if context.auth_context().get("x509_pem_cert"):
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"worker RPCs need a cluster member's certificate (SAN {self.credential.identity})",
            )
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            f"worker RPCs are internal: send the cluster token as metadata {TOKEN_HEADER!r}",
        )

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not self.enforced or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        return _guarded(handler, self.refusal)


def _has_identity(context: grpc.ServicerContext, identity: str) -> bool:
    auth = context.auth_context()
    names = [*auth.get("x509_subject_alternative_name", ()), *auth.get("peer_uri", ())]
    return identity.encode() in names


def _guarded(handler: grpc.RpcMethodHandler, refusal: Callable[[grpc.ServicerContext], Refusal | None]):
    """The same handler, with the caller checked before the method runs."""

    def guard(behavior):
        def guarded(request_or_iterator, context):
            refused = refusal(context)
            if refused is not None:
                context.abort(refused.code, refused.message)
            return behavior(request_or_iterator, context)

        return guarded

    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for name, make in kinds:
        behavior = getattr(handler, name)
        if behavior is not None:
            return make(
                guard(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)
        self.metadata = metadata


class ClusterTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the cluster token to every call on a channel to a worker."""

    def __init__(self, credential: ClusterCredential) -> None:
        self._extra = credential.metadata()

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details, [*(details.metadata or ()), *self._extra])

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)
