"""The gRPC servicers of the router: public `Baton` and `BatonAdmin`. Thin: auth, error mapping,
then `RouterCore`."""

from __future__ import annotations

from baton_pb.v1 import admin_pb2, admin_pb2_grpc, public_pb2, public_pb2_grpc
from router.core import RouterCore
from rpc.auth import TokenAuth
from rpc.errors import PermissionDenied, grpc_errors


class BatonServicer(public_pb2_grpc.BatonServicer):
    def __init__(self, core: RouterCore, auth: TokenAuth) -> None:
        self.core = core
        self.auth = auth

    def Generate(self, request, context):
        with grpc_errors(context):
            tenant = self.auth.tenant_for(context.invocation_metadata(), request.tenant)
            for response in self.core.generate(request, tenant):
                if not context.is_active():
                    return
                yield response

    def Abort(self, request, context):
        with grpc_errors(context):
            tenant = self.auth.tenant_for(context.invocation_metadata(), request.tenant)
            return public_pb2.AbortResponse(aborted=self.core.abort(request.request_id, tenant))

    def GetModelInfo(self, request, context):
        with grpc_errors(context):
            self.auth.principal(context.invocation_metadata())
            return self.core.model_info()


class AdminServicer(admin_pb2_grpc.BatonAdminServicer):
    """On the admin listener: admin token when auth is on. On the public listener
    (`public_listener`): always an admin token, so without auth the admin API is not served there."""

    def __init__(self, core: RouterCore, auth: TokenAuth, *, public_listener: bool = False) -> None:
        self.core = core
        self.auth = auth
        self.public_listener = public_listener

    def _authorize(self, context) -> None:
        if self.public_listener and not self.auth.enabled:
            raise PermissionDenied(
                "admin RPCs are served on the admin listener (--admin-listen), not the public one"
            )
        self.auth.require_admin(context.invocation_metadata())

    def ListWorkers(self, request, context):
        with grpc_errors(context):
            self._authorize(context)
            return self.core.list_workers()

    def Scale(self, request, context):
        with grpc_errors(context):
            self._authorize(context)
            if request.prefill < 0 or request.decode < 0:
                raise ValueError("worker counts must be >= 0")
            if request.decode < 1:
                raise ValueError("at least one decode worker is needed")
            workers = self.core.scale(request.prefill, request.decode)
            return admin_pb2.ScaleResponse(workers=workers.workers)

    def Drain(self, request, context):
        with grpc_errors(context):
            self._authorize(context)
            self.core.drain(request.worker_id, remove=True)
            return admin_pb2.DrainResponse(draining=True)
