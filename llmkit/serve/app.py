"""The ASGI application: routes, OpenAI-shaped errors and the middleware stack, on Starlette.

Routes: /health (no key; 503 while loading or draining), /metrics (Prometheus text), /v1/models,
/v1/chat/completions and /v1/completions (generation.py), /v1/embeddings (embeddings.py), and llmkit's own
/v1/classify and /v1/fill-mask (encoders.py). Middleware, outermost first: CORS (only with
--allowed-origins, so browsers' preflights are answered before the key is asked for), the timing of every request
for /metrics, the request-size limit, then the API key. Every error a client can get is OpenAI's error object
({"error": {"message", "type", "param", "code"}}) with the status OpenAI uses for it, so its clients raise their
usual exceptions (BadRequestError, AuthenticationError, NotFoundError, RateLimitError, ...).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmkit.errors import ContextLengthError, LlmkitError, UsageError
from llmkit.openai_api import BodyError, error_body
from llmkit.serve.embeddings import embeddings_job
from llmkit.serve.encoders import classify_job, fill_mask_job
from llmkit.serve.generation import (
    ClientGone,
    EventStream,
    GenerationRequest,
    Run,
    answers_body,
    collect,
    parse_request,
    stream_events,
    usage_of,
)
from llmkit.serve.limits import Admission, ApiKeyGuard, App, BodyLimit, QueueFull, Receive, Scope, Send
from llmkit.serve.models import CHAT, CLASSIFY, COMPLETIONS, EMBEDDINGS, FILL_MASK, Registry
from llmkit.serve.settings import RETRY_AFTER_SECONDS, ServeSettings
from llmkit.serve.telemetry import Telemetry

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
          "/v1/classify", "/v1/fill-mask")


class ServerState:
    """What the routes share: the settings, the models, the metrics, the admission gate and the worker threads.

    Attributes:
        draining: set on SIGTERM; /health then says 503 "draining" while in-flight requests finish.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings.models)
        self.telemetry = Telemetry()
        registry = self.registry
        self.telemetry.watch_batches(lambda: [(name, getattr(registry.get(name), "generator", None))
                                              for name in registry.names()])
        self.admission: Admission | None = None  # made on the event loop's first request (asyncio objects)
        # One thread per choice being generated: max_concurrency requests of up to n choices each run at once.
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrency * 8, thread_name_prefix="llmkit-serve")
        self.draining = False
        # generation requests received and not yet handed to an engine (parsing): the Llama loop's batch waits
        # for them before it starts (engines/transformers.Generator._gather)
        self.arriving = 0

    def attach(self, model: Any) -> None:
        """Tell a loaded model's engine about the requests on their way (where it batches them)."""
        if hasattr(model.generator, "arriving"):
            model.generator.arriving = lambda: self.arriving

    def gate(self) -> Admission:
        if self.admission is None:
            telemetry = self.telemetry

            def changed(active: int, waiting: int) -> None:
                telemetry.in_flight.set(active)
                telemetry.queue_depth.set(waiting)

            self.admission = Admission(self.settings.max_concurrency, self.settings.max_queue, changed)
        return self.admission


def error(status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI error response."""
    return JSONResponse(error_body(message, kind=kind, param=param, code=code), status_code=status, headers=headers)


def engine_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) for an exception raised while generating."""
    if isinstance(exc, ContextLengthError):
        what = exc.message.split(";")[0]  # the engine's facts, without its command-line advice
        return 400, error_body(f"The prompt and the answer asked for do not fit the model's context ({what}); ask "
                               "for fewer max_tokens or shorten the prompt", code="context_length_exceeded")
    if isinstance(exc, UsageError):
        return 400, error_body(exc.message, code="invalid_request")
    if isinstance(exc, LlmkitError):
        return 500, error_body(exc.message, kind="server_error", code="generation_failed")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return 500, error_body(f"{type(exc).__name__}: {first}", kind="server_error", code="internal_error")


async def read_body(request: Request) -> dict[str, Any]:
    """The JSON object a POST carries.

    Raises:
        BodyError: not JSON, or not an object.
    """
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BodyError("invalid_json", f"the request body is not valid JSON ({getattr(exc, 'msg', exc)}); send "
                        "a JSON object with Content-Type: application/json") from None
    if not isinstance(body, dict):
        raise BodyError("invalid_request", "the request body must be a JSON object")
    return body


def build_app(state: ServerState) -> App:
    """The whole ASGI app of a server (routes and middleware) over `state`."""
    settings, registry, telemetry = state.settings, state.registry, state.telemetry

    async def health(request: Request) -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if registry.error is not None:
            return JSONResponse({"status": "failed", "error": registry.error.message}, status_code=503)
        if not registry.ready:
            return JSONResponse({"status": "loading", "models": [c["id"] for c in registry.cards()]},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return JSONResponse({"status": "ok", "models": registry.names()})

    async def metrics(request: Request) -> Response:
        telemetry.models_loaded.set(len(registry.cards()))
        data, content_type = telemetry.render()
        return Response(data, media_type=content_type)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": registry.cards()})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        found = registry.get(name)
        if found is None:
            return error(404, f"The model {name!r} does not exist on this server; GET /v1/models lists them",
                         param="model", code="model_not_found")
        return JSONResponse(found.card())

    async def chat(request: Request) -> Response:
        return await generate(request, CHAT)

    async def completions(request: Request) -> Response:
        return await generate(request, COMPLETIONS)

    async def embeddings(request: Request) -> Response:
        return await encoder_request(request, EMBEDDINGS, embeddings_job)

    async def classify(request: Request) -> Response:
        return await encoder_request(request, CLASSIFY, classify_job)

    async def fill_mask(request: Request) -> Response:
        return await encoder_request(request, FILL_MASK, fill_mask_job)

    async def encoder_request(request: Request, endpoint: str, prepare: Any) -> Response:
        """An encoder's request: the body read at once, the model run in a worker thread, one request at a time
        per model (each batches its own inputs)."""
        try:
            body = await read_body(request)
            served = find_model(body, endpoint)
            if isinstance(served, Response):
                return served
            job = prepare(served, body)
        except BodyError as exc:
            return error(400, exc.message, param=exc.param, code=exc.code)
        try:
            release = await state.gate().acquire()
        except QueueFull:
            return busy()

        def run() -> tuple[dict[str, Any], int]:
            with served.lock:
                return job()

        try:
            payload, tokens = await asyncio.get_running_loop().run_in_executor(state.pool, run)
        except Exception as exc:  # noqa: BLE001 - the engine's failure becomes the client's error
            status, payload = engine_error(exc)
            return JSONResponse(payload, status_code=status)
        finally:
            release()
        telemetry.count_tokens(served.name, tokens, 0)
        return JSONResponse(payload)

    def busy() -> Response:
        telemetry.rejected.labels(reason="queue_full").inc()
        return error(429, f"The server is busy: {settings.max_concurrency} requests are being answered and "
                     f"{settings.max_queue} are waiting; retry after {RETRY_AFTER_SECONDS} s",
                     kind="rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def generate(request: Request, endpoint: str) -> Response:
        state.arriving += 1
        try:
            body = await read_body(request)
            served = find_model(body, endpoint)
            if isinstance(served, Response):
                return served
            parsed = parse_request(body, is_chat=endpoint == CHAT, max_tokens=settings.max_tokens)
            missing = served.generator.unsupported(parsed.settings)
            if missing:
                return error(400, f"{served.name} runs on {served.engine}, which has no {', '.join(missing)}",
                             code="unsupported_parameter")
            served.generator.check(parsed.settings)
        except BodyError as exc:
            return error(400, exc.message, param=exc.param, code=exc.code)
        except UsageError as exc:
            return error(400, exc.message, code="invalid_request")
        finally:
            state.arriving -= 1  # on its way to the queue now (or answered): no batch waits for it any more
        try:
            release = await state.gate().acquire()
        except QueueFull:
            return busy()
        started = time.perf_counter()
        run = Run(served.generator, parsed, state.pool, asyncio.get_running_loop())
        try:
            if parsed.stream:
                return await streamed(request, served.name, parsed, run, release, started)
            try:
                done = await collect(run, request.is_disconnected)
            finally:
                release()
        except ClientGone:
            telemetry.cancelled.labels(model=served.name).inc()
            return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
        except Exception as exc:  # noqa: BLE001 - the engine's failure becomes the client's error, the server goes on
            release()
            status, payload = engine_error(exc)
            return JSONResponse(payload, status_code=status)
        telemetry.count_tokens(served.name, *usage_of(done))
        return JSONResponse(answers_body(parsed, done, model=served.name))

    async def streamed(request: Request, name: str, parsed: GenerationRequest, run: Run, release: Any,
                       started: float) -> Response:
        """The SSE response; the first event is awaited first, so that a failure before any text (a prompt too
        long, a template that refuses the messages) is an HTTP error, not an event in a 200 stream."""
        try:
            first = await run.next_event(request.is_disconnected)
        except BaseException:
            release()
            raise
        if first[0] == "error":
            release()
            run.cancel()
            status, payload = engine_error(first[2])
            return JSONResponse(payload, status_code=status)
        stream = EventStream(parsed, name)
        finished: list[bool] = []

        def first_text() -> None:
            telemetry.first_token.labels(model=name).observe(time.perf_counter() - started)

        def finish(done: list[Any]) -> None:
            finished.append(True)
            telemetry.count_tokens(name, *usage_of(done))

        async def never() -> bool:
            return False  # Starlette watches for the disconnect itself, and cancels the stream

        async def body() -> Any:
            try:
                async for line in stream_events(run, stream, first, never, lambda exc: engine_error(exc)[1],
                                                first_text, finish):
                    yield line
            finally:
                release()
                if not finished:
                    telemetry.cancelled.labels(model=name).inc()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def find_model(body: dict[str, Any], endpoint: str) -> Any:
        name = body.get("model")
        if name is None and len(settings.models) == 1:
            name = settings.models[0].name  # one model: requests may leave it out (curl)
        if not isinstance(name, str):
            raise BodyError("invalid_request", "model is required: the name of a served model (GET /v1/models)",
                            "model")
        served = registry.get(name)
        if served is None:
            if name in registry.names():
                return error(503, f"The model {name!r} is still loading; retry shortly", kind="server_error",
                             code="model_loading", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return error(404, f"The model {name!r} does not exist on this server; it serves "
                         f"{', '.join(registry.names())}", param="model", code="model_not_found")
        if endpoint not in served.endpoints:
            return error(400, f"{name} does not answer {endpoint} (it answers {', '.join(served.endpoints)})",
                         param="model", code="unsupported_model")
        return served

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        return error(exc.status_code, f"No route {request.url.path}; llmkit serves {', '.join(ROUTES)}",
                     code="not_found")

    async def crashed(request: Request, exc: Exception) -> Response:
        status, payload = engine_error(exc)
        return JSONResponse(payload, status_code=status)

    app: App = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/models/{name:path}", model),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/classify", classify, methods=["POST"]),
            Route("/v1/fill-mask", fill_mask, methods=["POST"]),
        ],
        exception_handlers={HTTPException: not_found, Exception: crashed},
    )
    if settings.api_key:
        app = ApiKeyGuard(app, settings.api_key)
    app = BodyLimit(app, settings.max_body_bytes)
    app = Timing(app, telemetry)
    if settings.allowed_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(app, allow_origins=list(settings.allowed_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])
    return app


class Timing:
    """Counts every request by route and status, and its time to the last byte (streams included)."""

    def __init__(self, app: App, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else ("/v1/models/{name}" if path.startswith("/v1/models/") else "other")
        started = time.perf_counter()
        status = 500

        async def watched(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            self.telemetry.observe(route, status, time.perf_counter() - started)
