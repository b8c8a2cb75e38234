"""/v1/embeddings: OpenAI's embeddings request read strictly, answered by `llmkit embed`'s Embedder.

The vectors are the ones `llmkit embed` writes for the same model and text (the same Embedder: the model's own
pooling and normalisation from its sentence-transformers files). `encoding_format` "base64" (what the `openai`
Python client asks for by default) is the float32 little-endian bytes of each vector, as OpenAI sends them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from llmkit.openai_api import BodyError

FIELDS = ("model", "input", "encoding_format", "dimensions", "user")
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request


@dataclass(frozen=True)
class EmbeddingsRequest:
    """What one /v1/embeddings body asks for: the texts, and how the vectors are sent back."""

    texts: tuple[str, ...]
    base64: bool


def parse_texts(body: dict[str, Any], fields: tuple[str, ...], what: str) -> list[str]:
    """The body's `input` (a string or a non-empty list of non-empty strings), after refusing any field not in
    `fields` (`what` names the endpoint in the message).

    Raises:
        BodyError: an unknown field, or an input that is missing, empty or not text.
    """
    for name in body:
        if name not in fields:
            raise BodyError("unsupported_parameter", f"{name} is not supported by llmkit's {what} (it takes "
                            f"{', '.join(fields)})", name)
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts:
        raise BodyError("invalid_request", "input is required: a string or a non-empty list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise BodyError("invalid_request", f"input has {len(texts)} items; send at most {MAX_INPUTS} per request",
                        "input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BodyError("unsupported_parameter", f"input[{i}] is not a string; llmkit takes text, not token "
                            "arrays", "input")
        if not text.strip():
            raise BodyError("invalid_request", f"input[{i}] is empty; every input needs some text", "input")
    return texts


def parse_embeddings(body: dict[str, Any], dimension: int) -> EmbeddingsRequest:
    """Read an embeddings body for a model whose vectors have `dimension` numbers.

    Raises:
        BodyError: the first field that is missing, malformed or not supported (its name in `param`).
    """
    texts = parse_texts(body, FIELDS, "/v1/embeddings")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BodyError("invalid_request", f"encoding_format {encoding!r}: use float or base64", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != dimension:
        raise BodyError("unsupported_parameter", f"dimensions {dimensions}: this model's vectors have {dimension} "
                        "numbers and llmkit does not shorten them; leave dimensions out", "dimensions")
    return EmbeddingsRequest(tuple(texts), encoding == "base64")


def embeddings_job(served: Any, body: dict[str, Any]) -> Any:
    """Read the body now (BodyError at once); the returned call runs the model: (response body, prompt tokens)."""
    request = parse_embeddings(body, served.embedder.dimension)

    def run() -> tuple[dict[str, Any], int]:
        vectors, tokens = embed_all(served.embedder, request)
        return embeddings_body(request, vectors, tokens, model=served.name), tokens

    return run


def embed_all(embedder: Any, request: EmbeddingsRequest) -> tuple[list[Any], int]:
    """(the vectors of the request's texts, in order; tokens the model read). Runs the model: call it off the
    event loop."""
    vectors: list[Any] = []
    tokens = 0
    for item in embedder.embed(list(request.texts)):
        vectors.append(item.embedding)
        tokens += item.tokens
    return vectors, tokens


def embeddings_body(request: EmbeddingsRequest, vectors: list[Any], tokens: int, *, model: str) -> dict[str, Any]:
    """OpenAI's embeddings response."""
    import numpy as np

    def encoded(vector: Any) -> Any:
        if request.base64:
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        return [float(x) for x in vector]

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
