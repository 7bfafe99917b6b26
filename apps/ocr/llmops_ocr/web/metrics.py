"""Prometheus metrics of the web app; multiprocess-safe under gunicorn.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn_conf sets it before workers start) every
worker writes its samples there and ``/metrics`` adds them up, so all workers are counted.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "llmops_web_requests_total",
    "HTTP requests served by the web app",
    ["method", "route", "status"],
)
DURATION = Histogram(
    "llmops_web_request_duration_seconds",
    "Time to answer a web request",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
API_CALLS = Counter(
    "llmops_web_api_calls_total",
    "Calls from the web app to the inference API, by outcome",
    ["outcome"],
)
API_DURATION = Histogram(
    "llmops_web_api_call_duration_seconds",
    "Duration of calls to the inference API",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LOGINS = Counter("llmops_web_logins_total", "Login attempts, by result", ["result"])


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of all workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
