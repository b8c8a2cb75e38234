"""The server's guards: the API key, the request-size limit, and admission (concurrency and a bounded queue).

The key and size checks are plain ASGI middleware, so they answer before a body is read or a route runs; both
answer in OpenAI's error shape, which the `openai` client turns into AuthenticationError / APIStatusError.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from llmkit.openai_api import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/health",)  # answered without the key: load balancers and orchestrators probe it


async def send_error(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """Send a whole JSON error response from ASGI middleware."""
    data = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class ApiKeyGuard:
    """Refuses every HTTP request but OPEN_PATHS without `Authorization: Bearer <key>` (401).

    The comparison is `hmac.compare_digest`: its time does not depend on how much of a wrong key matched.
    """

    def __init__(self, app: App, key: str) -> None:
        self.app = app
        self.key = key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                given = token.strip() if scheme.lower() == b"bearer" else b""
        if not hmac.compare_digest(given, self.key):
            message = ("Incorrect API key provided; send it as `Authorization: Bearer KEY` (the server's --api-key "
                       "or LLMKIT_API_KEY)") if given else "Missing API key; send `Authorization: Bearer KEY`"
            await send_error(send, 401, error_body(message, kind="invalid_request_error", code="invalid_api_key"),
                             {"www-authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: by its Content-Length before reading it, or, without
    one (chunked), as soon as what has arrived passes the limit."""

    def __init__(self, app: App, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _error(self) -> dict[str, Any]:
        return error_body(f"Request body too large: the limit is {self.limit} bytes (the server's --max-body)",
                          code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await send_error(send, 413, self._error(), {"connection": "close"})
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await send_error(send, 413, self._error(), {"connection": "close"})


class _TooLarge(Exception):
    pass


class QueueFull(Exception):
    """Every generation slot is busy and the queue holds `max_queue` requests already."""


class Admission:
    """At most `max_concurrency` requests generate at once; up to `max_queue` more wait their turn, in order.

    `acquire()` either takes a slot (waiting in the queue when all are busy) or raises `QueueFull` at once; the
    caller answers 429 with Retry-After. `release()` gives the slot back. `on_change(active, waiting)` is called
    after every change (the /metrics gauges).
    """

    def __init__(self, max_concurrency: int, max_queue: int,
                 on_change: Callable[[int, int], None] | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.active = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.active, self.waiting)

    async def acquire(self) -> Callable[[], None]:
        """Wait for a slot; returns the function that releases it (safe to call more than once).

        Raises:
            QueueFull: all slots busy and the queue full.
        """
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull
        self.waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        self._changed()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1
                self._slots.release()
                self._changed()

        return release
