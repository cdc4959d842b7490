"""`WorkerControl`, served by every worker: load, abort, drain, KV events, exposing a cached prefix
for a peer to read."""

from __future__ import annotations

import logging
import queue

from baton_pb.v1 import worker_pb2, worker_pb2_grpc
from rpc.errors import grpc_errors
from worker.core import WorkerCore
from worker.prefix_fetch import expose_prefix, release_exposed

log = logging.getLogger(__name__)
EVENT_POLL_S = 0.5


class WorkerControlServicer(worker_pb2_grpc.WorkerControlServicer):
    def __init__(self, core: WorkerCore) -> None:
        self.core = core

    def GetLoad(self, request, context):
        with grpc_errors(context):
            return self.core.worker_info()

    def Abort(self, request, context):
        with grpc_errors(context):
            aborted = self.core.loop.call(lambda engine: engine.abort(request.request_id))
            return worker_pb2.WorkerAbortResponse(aborted=bool(aborted))

    def Drain(self, request, context):
        self.core.draining.set()
        return worker_pb2.WorkerDrainResponse(draining=True)

    def SubscribeKvEvents(self, request, context):
        subscriber = self.core.hub.subscribe()
        try:
            while context.is_active():
                try:
                    batch = subscriber.get(timeout=EVENT_POLL_S)
                except queue.Empty:
                    continue
                if batch is None:
                    return
                yield batch
        finally:
            self.core.hub.unsubscribe(subscriber)

    def ExposePrefix(self, request, context):
        with grpc_errors(context):
            return expose_prefix(self.core, request)

    def ReleaseExposed(self, request, context):
        with grpc_errors(context):
            release_exposed(self.core, request.transfer_id)
            return worker_pb2.ReleaseExposedResponse()
