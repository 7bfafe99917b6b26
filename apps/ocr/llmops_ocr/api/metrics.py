"""Prometheus metrics of the inference API (names and labels: docs/CONTRACTS.md "Metrics").

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set before any worker imports prometheus_client
(see ``llmops_ocr.api.gunicorn_conf``), so every worker writes its samples to that directory and
``/metrics`` on any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter(
    "llmops_api_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "llmops_api_request_duration_seconds",
    "Time from request start to the end of the response, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "llmops_api_batch_size",
    "Line crops per model call (dynamic batching across requests).",
    ["model_version"],
    buckets=BATCH_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "llmops_api_queue_wait_seconds",
    "Time a request waited in the batch queue before its batch was taken up.",
    ["model_version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "llmops_api_inference_seconds",
    "Duration of one batched model call.",
    ["model_version"],
    buckets=LATENCY_BUCKETS,
)
LINES = Counter(
    "llmops_api_lines_total",
    "Text lines recognised.",
    ["model_version"],
)
MODEL_LOAD_SECONDS = Gauge(
    "llmops_api_model_load_seconds",
    "Seconds it took to load (and verify) a model version, slowest live worker.",
    ["model_version"],
    multiprocess_mode="livemax",
)
READY_WORKERS = Gauge(
    "llmops_api_ready_workers",
    "Workers that loaded their models and passed the warm-up inference.",
    multiprocess_mode="livesum",
)
QUEUE_FULL = Counter(
    "llmops_api_queue_full_total",
    "Requests answered 503 because the batch queue was full.",
)
HISTORY_DROPPED = Counter(
    "llmops_api_history_dropped_total",
    "Request history records not written to the database, by reason.",
    ["reason"],
)
HISTORY_WRITTEN = Counter(
    "llmops_api_history_written_total",
    "Request history records written to the database.",
)


def observe_batch(version: str, size: int, waits: list[float], seconds: float) -> None:
    """Record one batched model call (and the queue waits of the requests it serves)."""
    if size:  # 0: the jobs had no lines (blank page, bad image): no model call
        BATCH_SIZE.labels(version).observe(size)
        INFERENCE_SECONDS.labels(version).observe(seconds)
        LINES.labels(version).inc(size)
    wait = QUEUE_WAIT.labels(version)
    for w in waits:
        wait.observe(w)


def render() -> tuple[bytes, str]:
    """The exposition text: all workers' samples in multiprocess mode, else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every response by status and times it, labelled by route template (bounded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The router records the matched route in the scope; unknown paths are "other" so
            # that scanners cannot blow up the label set.
            route = str(getattr(scope.get("route"), "path", "other"))
            observe_request(scope["method"], route, status, time.perf_counter() - started)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one response and its latency (``route``: a route template, never a raw path)."""
    REQUESTS.labels(method, route, str(status)).inc()
    REQUEST_SECONDS.labels(route).observe(seconds)
