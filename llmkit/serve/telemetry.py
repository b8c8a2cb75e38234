"""/metrics: what the server has done, in Prometheus' text format (prometheus_client does the format).

Each server has its own registry (not the process-global one), so two servers in one test process do not mix
their counts. Names follow Prometheus' conventions: `_total` for counters (added by the client), `_seconds`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Request latency from a few milliseconds (an error, /v1/models) to minutes (a long answer in a busy queue).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Telemetry:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmkit_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=r)
        self.tokens = Counter("llmkit_tokens", "Tokens read (prompt) and generated (completion), by model",
                              ["model", "kind"], registry=r)
        self.queue_depth = Gauge("llmkit_queue_depth", "Requests waiting for a generation slot", registry=r)
        self.in_flight = Gauge("llmkit_requests_in_flight", "Requests holding a generation slot", registry=r)
        self.rejected = Counter("llmkit_requests_rejected", "Requests turned away before running, by reason",
                                ["reason"], registry=r)
        self.cancelled = Counter("llmkit_generations_cancelled", "Generations stopped because the client left",
                                 ["model"], registry=r)
        self.latency = Histogram("llmkit_request_duration_seconds", "Time from request to the last byte, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("llmkit_time_to_first_token_seconds",
                                     "Time from request to the first streamed text, by model", ["model"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.models_loaded = Gauge("llmkit_models_loaded", "Models loaded and answering", registry=r)

    def watch_batches(self, generators: Any) -> None:
        """Expose the batch counts of the engines `generators()` returns ([(model name, generator)]) that keep
        them (`batch_stats()`: the Llama loop's continuous batches): `llmkit_batch_admissions_total{model,rows}`
        (prefills, by how many requests joined the decode in one) and `llmkit_decode_steps_total{model,rows}`
        (decode steps, by how many requests each advanced)."""
        self.registry.register(_BatchCollector(generators))

    def render(self) -> tuple[bytes, str]:
        """(the text exposition of every metric, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        """Add one answer's tokens."""
        self.tokens.labels(model=model, kind="prompt").inc(prompt)
        self.tokens.labels(model=model, kind="completion").inc(completion)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)



class _BatchCollector:
    """A prometheus_client collector of the engines' batch counts, read at each scrape."""

    def __init__(self, generators: Any) -> None:
        self.generators = generators

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        admissions = CounterMetricFamily("llmkit_batch_admissions", "Prefills of requests joining the decode, by "
                                         "how many requests joined together", labels=["model", "rows"])
        steps = CounterMetricFamily("llmkit_decode_steps", "Decode steps, by how many requests each advanced",
                                    labels=["model", "rows"])
        for name, generator in self.generators():
            stats = getattr(generator, "batch_stats", None)
            if stats is None:
                continue
            counts = stats()
            for family, key in ((admissions, "admissions"), (steps, "steps")):
                for rows, count in sorted(counts[key].items()):
                    family.add_metric([name, str(rows)], count)
        yield admissions
        yield steps
