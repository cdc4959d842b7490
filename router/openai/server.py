"""The OpenAI-compatible HTTP server inside the router process (`--http-listen`).

Library: aiohttp. It is maintained by aio-libs with regular releases, it is already installed (Ray
depends on it), it is server and client in one small package, and it streams SSE with a plain
`StreamResponse` — FastAPI would add starlette + uvicorn + pydantic for routing we do not need.

Threading: the server runs its own asyncio loop in a daemon thread. Each request's blocking work
(template rendering, tokenization, `RouterCore.generate`) runs in a thread pool and streams back
through `ThreadStream` — a bridge instead of moving the router to `grpc.aio`, so the gRPC face is
unchanged and both faces go through the same `RouterCore` (routing, caching, failover, limits).

A client that disconnects cancels its handler (`handler_cancellation`); the handler then aborts
the request on the workers (`RouterCore.abort`), which frees its pages.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models[/{id}], GET /health.
Auth: the gRPC API's bearer tokens (`Authorization: Bearer <token>`), bound to the same tenants.
Sessions: the `x-session-id` header, else the request's `user` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from concurrent import futures
from dataclasses import dataclass

from aiohttp import web

from router.openai.chat_request import SESSION_HEADER, ApiRequest, chat_request, completion_request
from router.openai.errors import ApiError, api_error, plain_error
from router.openai.generation import ChatGeneration, TextGeneration
from router.openai.listen import split_listen

log = logging.getLogger(__name__)


@dataclass
class RunningHttp:
    address: str
    _api: OpenAiApi
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        self._api.executor.shutdown(wait=False, cancel_futures=True)
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def start_http(core, auth, listen: str, max_body_bytes: int) -> RunningHttp:
    host, port = split_listen(listen)
    api = OpenAiApi(core, auth)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[error_middleware])
    app.add_routes([
        web.post("/v1/chat/completions", api.chat_completions),
        web.post("/v1/completions", api.completions),
        web.get("/v1/models", api.models),
        web.get("/v1/models/{model}", api.model),
        web.get("/health", api.health),
    ])  # fmt: skip
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    started = threading.Event()
    bound: list[str] = []
    failed: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port, reuse_address=True)
            loop.run_until_complete(site.start())
        except BaseException as error:  # noqa: BLE001 - reported to the starting thread
            failed.append(error)
            started.set()
            return
        address = runner.addresses[0]  # the real port when 0 was asked
        bound.append(f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}")
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="router-http", daemon=True)
    thread.start()
    if not started.wait(10) or failed:
        api.executor.shutdown(wait=False)
        raise RuntimeError(f"the HTTP server could not listen on {listen}: {failed[0] if failed else 'timed out'}")
    log.info("OpenAI HTTP API on http://%s", bound[0])
    return RunningHttp(bound[0], api, loop, runner, thread)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        kind = "not_found_error" if error.status == 404 else "invalid_request_error"
        return error_response(plain_error(error.status, _http_message(error), kind))
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes an OpenAI error object
        found = api_error(error)
        if found.status == 500:
            log.exception("internal error in %s", request.path)
        return error_response(found)


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers())


def _http_message(error: web.HTTPException) -> str:
    if error.status == 413:
        return f"request body too large ({error.text})"
    return error.text or error.reason


class OpenAiApi:
    def __init__(self, core, auth) -> None:
        self.core = core
        self.auth = auth
        self.executor = futures.ThreadPoolExecutor(max_workers=core.config.max_in_flight + 8, thread_name_prefix="router-http")

    # ---- endpoints -------------------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        tenant = self._tenant(request)
        api = chat_request(await _json_body(request), request.headers.get(SESSION_HEADER, ""))
        generation = ChatGeneration(self.core, api, tenant, self._request_id(api))
        return await self._respond(request, generation, api)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        tenant = self._tenant(request)
        api = completion_request(await _json_body(request), request.headers.get(SESSION_HEADER, ""))
        generation = TextGeneration(self.core, api, tenant, self._request_id(api))
        return await self._respond(request, generation, api)

    async def models(self, request: web.Request) -> web.Response:
        self.auth.principal(_metadata(request))
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        self.auth.principal(_metadata(request))
        if request.match_info["model"] not in (self.core.model_name, self.core.model_id, self.core.config.model):
            raise web.HTTPNotFound(text=f"unknown model {request.match_info['model']!r}")
        return web.json_response(self._model_card())

    async def health(self, request: web.Request) -> web.Response:
        ready = bool(self.core.registry.workers("decode", routable=True))
        return web.json_response({"status": "ok" if ready else "no decode worker ready"}, status=200 if ready else 503)

    # ---- one generation --------------------------------------------------------------------------
    async def _respond(self, request: web.Request, generation, api: ApiRequest) -> web.StreamResponse:
        stream = generation.start(self.executor)
        try:
            first = await generation.first(stream)  # errors before any token are plain HTTP errors
            if not api.stream:
                return web.json_response(await generation.whole(stream, first))
            response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
            await response.prepare(request)
            try:
                async for chunk in generation.chunks(stream, first):
                    await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            except ConnectionError:
                return response  # the client left; `finally` aborts the request
            except Exception as error:  # noqa: BLE001 - the status is sent: the error goes in the stream
                await response.write(b"data: " + json.dumps(api_error(error).body()).encode() + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            if not generation.finished:
                await self._abort(stream, generation.request_id, generation.tenant)

    async def _abort(self, stream, request_id: str, tenant: str) -> None:
        stream.stop()
        with contextlib.suppress(Exception):
            await asyncio.get_running_loop().run_in_executor(self.executor, self.core.abort, request_id, tenant)

    def _tenant(self, request: web.Request) -> str:
        return self.auth.tenant_for(_metadata(request), "")

    def _request_id(self, api: ApiRequest) -> str:
        api.generate.request_id = uuid.uuid4().hex
        return api.generate.request_id

    def _model_card(self) -> dict:
        return {"id": self.core.model_name, "object": "model", "created": 0, "owned_by": "baton",
                "max_model_len": self.core.max_context}  # fmt: skip


def _metadata(request: web.Request) -> list[tuple[str, str]]:
    return [("authorization", request.headers.get("authorization", ""))]


async def _json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=f"content-type must be application/json, not {request.content_type!r}")
    raw = await request.read()  # over client_max_size: 413
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body
