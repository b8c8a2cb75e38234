"""`llmkit serve`: options and the thin command over `llmkit.serve.run()`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from llmkit.cli.options import DeviceOpt, DtypeOpt, command_app
from llmkit.serve import settings as defaults  # torch-free: the defaults for --help

app = command_app()


@app.command(
    "serve",
    epilog="Examples:\n\n"
    "  llmkit serve -m smollm2-135m-instruct\n\n"
    "  LLMKIT_API_KEY=secret llmkit serve -m chat=smollm2-135m-instruct -m ./my-finetuned-model --port 8080\n\n"
    "  llmkit serve -m smollm2-135m-instruct -m minilm-l6   # chat and embeddings in one server\n\n"
    "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' "
    "-d '{\"model\": \"smollm2-135m-instruct\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'",
)
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A model to serve (repeatable): alias, folder, .gguf file or hub id; "
                     "NAME=MODEL names it for requests' \"model\" field (default: the model as given). A causal "
                     "LM answers chat and completions, an encoder-decoder completions, an encoder embeddings."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 opens it to the network "
                                      "(give --api-key then).")] = defaults.DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port, printed at start).")]
    = defaults.DEFAULT_PORT,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help=f"Ask every request but /health for `Authorization: Bearer KEY` "
                     f"(default: ${defaults.API_KEY_ENV}; none: no key asked).", show_default=False),
    ] = None,
    allowed_origins: Annotated[
        list[str] | None,
        typer.Option("--allowed-origins", help="A browser origin allowed to call the server (CORS; repeatable, or "
                     "comma-separated; '*' for any). None: no CORS headers."),
    ] = None,
    max_concurrency: Annotated[
        int, typer.Option("--max-concurrency", help="Requests generated at once (llama.cpp decodes them together).",
                          min=1),
    ] = defaults.DEFAULT_MAX_CONCURRENCY,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests waiting beyond --max-concurrency; more get 429 with "
                          "Retry-After.", min=0),
    ] = defaults.DEFAULT_MAX_QUEUE,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Most tokens one answer may ask for (max_tokens; a request without "
                          "one gets 128, as llmkit generate does).", min=1),
    ] = defaults.DEFAULT_MAX_TOKENS,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest request body in bytes; larger ones get 413.", min=1),
    ] = defaults.DEFAULT_MAX_BODY_BYTES,
    drain_seconds: Annotated[
        float, typer.Option("--drain-seconds", help="On SIGTERM, how long in-flight requests may take to finish.",
                            min=0),
    ] = defaults.DEFAULT_DRAIN_SECONDS,
    engine: Annotated[
        str, typer.Option("--engine", help="auto|transformers|llama-cpp, for every model (auto: llama.cpp for GGUF "
                          "models, as in llmkit generate)."),
    ] = "auto",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (chat, completions, embeddings, models, health, metrics).

    Point the `openai` client (base_url="http://127.0.0.1:8000/v1"), curl or any OpenAI-compatible tool at it.
    Requests name a model by its -m name. A field llmkit cannot honour is refused with 400 naming it; no
    temperature means greedy decoding, as in llmkit generate. SIGTERM or Ctrl-C finishes in-flight requests,
    then exits 0.
    """
    from llmkit import serve as server

    origins = tuple(o.strip() for item in allowed_origins or () for o in item.split(",") if o.strip())
    key = api_key if api_key is not None else os.environ.get(defaults.API_KEY_ENV) or None
    server.run(server.ServeSettings(
        models=tuple(server.ModelArg.parse(m) for m in model or ()),
        host=host, port=port, api_key=key, allowed_origins=origins, max_concurrency=max_concurrency,
        max_queue=max_queue, max_tokens=max_tokens, max_body_bytes=max_body, drain_seconds=drain_seconds,
        engine=engine, device=device, dtype=dtype,
    ))
