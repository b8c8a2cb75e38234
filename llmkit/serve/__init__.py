"""`llmkit serve`: an OpenAI-compatible HTTP server for the models llmkit runs.

The server is Starlette on uvicorn (app.py); each `-m` model is loaded once on the engine `generate` would pick
(llama.cpp's parallel sequences for GGUF models, transformers otherwise; models.py) and answers
/v1/chat/completions and /v1/completions (generation.py); an encoder answers /v1/embeddings as `llmkit embed`
runs it (embeddings.py); /v1/models, /health and /metrics are beside them.
Safe by default: it listens on 127.0.0.1 only, asks for the API key on every route but /health when one is set,
sends no CORS headers unless told which origins may call it, and bounds request size, answer length, concurrency
and the queue (limits.py). SIGTERM (or Ctrl-C) drains: no new connections, in-flight requests finish, exit 0; a
second signal stops at once.

`run(settings)` is the Python API; the command line (cli/serve.py) only parses flags into `ServeSettings`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from llmkit.errors import MissingDependencyError, UsageError
from llmkit.serve.settings import API_KEY_ENV, ModelArg, ServeSettings

__all__ = ["API_KEY_ENV", "ModelArg", "ServeSettings", "run", "check"]

STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")  # each drains (those this platform has)


def check(settings: ServeSettings) -> None:
    """Refuse settings that cannot work, before anything loads.

    Raises:
        UsageError: no model, a name given twice, or a limit out of range.
    """
    if not settings.models:
        raise UsageError("give at least one model: llmkit serve -m MODEL (e.g. -m smollm2-135m-instruct)")
    names = [m.name for m in settings.models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"model name {twice[0]!r} is given twice; name them apart with -m NAME=MODEL")
    if not 0 <= settings.port <= 65535:
        raise UsageError("--port must be in 0-65535 (0: any free port)")
    for flag, value in (("--max-concurrency", settings.max_concurrency), ("--max-tokens", settings.max_tokens),
                        ("--max-body", settings.max_body_bytes)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if settings.max_queue < 0:
        raise UsageError("--max-queue must be 0 or more")
    if settings.api_key is not None and not settings.api_key.strip():
        raise UsageError(f"--api-key (or {API_KEY_ENV}) is empty; give a key, or leave both unset")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), bound before the models load."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(settings: ServeSettings, *, say: Any = None) -> None:
    """Serve until SIGTERM or Ctrl-C (then drain and return).

    Args:
        settings: the server's models, address and limits.
        say: where one-line progress goes (default: stderr through llmkit's console).

    Raises:
        UsageError: impossible settings, or the address cannot be listened on.
        LlmkitError: a model could not be loaded (the server stops; in-flight requests finish first).
        MissingDependencyError: the serve extra (Starlette, uvicorn, prometheus-client) is not installed.
    """
    check(settings)
    try:
        import uvicorn

        from llmkit.serve.app import ServerState, build_app
    except ImportError as exc:
        raise MissingDependencyError(f"llmkit serve needs {exc.name or 'its server libraries'} (the serve extra); install it: "
                                     "pip install 'llmkit[serve]'") from None

    if say is None:
        from llmkit.output import stderr_console

        console = stderr_console()

        def say(line: str) -> None:
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    state = ServerState(settings)
    sock = _listen(settings.host, settings.port)
    say(f"Listening on {_url(sock)} (models loading: {', '.join(state.registry.names())})")
    config = uvicorn.Config(build_app(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=int(max(1, settings.drain_seconds)))
    server = _draining_server(config, state, say)
    started = time.perf_counter()

    def loaded(model: Any) -> None:
        state.attach(model)
        say(f"Loaded {model.name} on {model.engine} ({model.reason})")

    def load() -> None:
        state.registry.load_all(settings, loaded)
        if state.registry.error is not None:
            say(f"Stopping: {state.registry.error.message}")
            server.should_exit = True
        else:
            say(f"Ready in {time.perf_counter() - started:.1f} s: {', '.join(state.registry.names())}")

    threading.Thread(target=load, name="llmkit-serve-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.pool.shutdown(wait=False, cancel_futures=True)
    if server.stopped_by is not None:
        say(f"Stopped ({server.stopped_by}): in-flight requests drained")
    state.registry.loaded.wait()
    if state.registry.error is not None:
        raise state.registry.error


def _draining_server(config: Any, state: Any, say: Any) -> Any:
    """uvicorn's Server, whose stop signals drain and are not re-raised: uvicorn re-raises a caught SIGTERM once it
    has shut down, which would end the process with 143 after a clean drain."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: str | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def stop(signum: int, frame: Any) -> None:
                if self.should_exit:  # a second signal: stop now
                    self.force_exit = True
                    return
                self.stopped_by = signal.Signals(signum).name
                state.draining = True
                active = state.admission.active + state.admission.waiting if state.admission else 0
                say(f"{self.stopped_by}: draining {active} in-flight request(s); a second signal stops at once")
                self.should_exit = True

            signums = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
            previous = {sig: signal.signal(sig, stop) for sig in signums}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server(config)
