"""llmkit's own routes for encoders: /v1/classify and /v1/fill-mask, answered as `llmkit classify` and
`llmkit fill-mask` answer (the same functions, on the model loaded once at start).

Bodies follow the embeddings request's shape: `model`, `input` (a string or a list of strings) and each command's
settings under its flag's name (`top_k`, `labels`, `targets`); any other field is refused with 400 naming it.
Each record is the command's `--json` record for that input, with its `index`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from llmkit.openai_api import BodyError
from llmkit.serve.embeddings import parse_texts

CLASSIFY_FIELDS = ("model", "input", "top_k", "labels", "user")
FILL_MASK_FIELDS = ("model", "input", "top_k", "targets", "user")
MAX_TOP_K = 100


def _top_k(body: dict[str, Any], default: int) -> int:
    top_k = body.get("top_k", default)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise BodyError("invalid_request", f"top_k must be an integer in 1-{MAX_TOP_K}", "top_k")
    return top_k


def _words(body: dict[str, Any], field: str) -> list[str] | None:
    words = body.get(field)
    if words is None:
        return None
    if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise BodyError("invalid_request", f"{field} must be a non-empty list of non-empty strings", field)
    return words


def _records(results: Any, model: str) -> dict[str, Any]:
    data = []
    for index, result in enumerate(results):
        record = asdict(result)
        record["model"] = model
        data.append({"index": index, **record})
    return {"object": "list", "model": model, "data": data}


def classify_job(served: Any, body: dict[str, Any]) -> Any:
    """Read a /v1/classify body now (BodyError at once); the returned call runs the model."""
    from llmkit.classify import DEFAULT_TOP_K, classify

    texts = parse_texts(body, CLASSIFY_FIELDS, "/v1/classify")
    top_k = _top_k(body, DEFAULT_TOP_K)
    labels = _words(body, "labels")

    def run() -> tuple[dict[str, Any], int]:
        results = list(classify(texts, loaded=served.encoder, choice=served.choice, top_k=top_k,
                                labels=labels))
        return _records(results, served.name), 0

    return run


def fill_mask_job(served: Any, body: dict[str, Any]) -> Any:
    """Read a /v1/fill-mask body now (BodyError at once); the returned call runs the model."""
    from llmkit.fill_mask import DEFAULT_TOP_K, fill_mask

    texts = parse_texts(body, FILL_MASK_FIELDS, "/v1/fill-mask")
    top_k = _top_k(body, DEFAULT_TOP_K)
    targets = _words(body, "targets")

    def run() -> tuple[dict[str, Any], int]:
        results = list(fill_mask(texts, loaded=served.encoder, choice=served.choice, top_k=top_k,
                                 targets=targets))
        return _records(results, served.name), 0

    return run
