"""Prometheus metrics of the server (``GET /metrics``, text exposition format).

``prometheus_client`` (the Prometheus project's own Python client) renders the format; every server
gets its own registry so that several apps in one process (tests) do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """Counters, gauges and histograms of one server.

    Args:
        queue_length: returns the number of requests waiting for a batch.
        running: returns the number of requests being generated.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_length: Callable[[], int] = lambda: 0, running: Callable[[], int] = lambda: 0):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "medvl_requests", "HTTP requests to the chat endpoint, by outcome", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "medvl_prompt_tokens", "prompt tokens processed (media placeholders included)", registry=r
        )
        self.completion_tokens = Counter("medvl_completion_tokens", "tokens generated", registry=r)
        self.cancelled = Counter(
            "medvl_cancelled_requests", "requests whose client left before the answer ended", registry=r
        )
        self.cancelled_tokens = Counter(
            "medvl_cancelled_completion_tokens", "tokens generated for requests whose client left", registry=r
        )
        self.latency = Histogram(
            "medvl_request_latency_seconds",
            "chat completion latency, arrival to last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "medvl_time_to_first_token_seconds", "arrival to first streamed token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "medvl_batch_size", "requests generated together", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        queue = Gauge("medvl_queue_length", "requests waiting for a batch", registry=r)
        queue.set_function(lambda: float(queue_length()))
        busy = Gauge("medvl_running_requests", "requests in the batch being generated", registry=r)
        busy.set_function(lambda: float(running()))
        self.ready = Gauge("medvl_model_ready", "1 once the model is loaded", registry=r)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


__all__ = ["ServerMetrics"]
