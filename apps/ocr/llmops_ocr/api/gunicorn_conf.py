"""gunicorn settings of the API: ``gunicorn -c python:llmops_ocr.api.gunicorn_conf``.

Workers and port come from the service config; command-line flags (``--bind``, ``--workers``)
override them. No ``preload_app``: every worker imports torch and loads the models itself, after
the fork. Prometheus multiprocess mode is switched on here, in the master, before any worker
imports prometheus_client, so ``/metrics`` on any worker reports all of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from llmops_ocr.api import balance
from llmops_ocr.config import ConfigError, load_config

try:
    _cfg: dict[str, Any] = load_config("api")
except ConfigError:
    _cfg = {}  # create_app() fails in the worker with the same, readable message


def _metrics_dir() -> str:
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not d:
        runtime = os.environ.get("RUNTIME_DIRECTORY")  # systemd RuntimeDirectory=
        d = (
            str(Path(runtime.split(":")[0]) / "metrics")
            if runtime
            else tempfile.mkdtemp(prefix="llmops-api-metrics-")
        )
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


_METRICS_DIR = _metrics_dir()
# Shared by all workers (made here, in the master, before it forks): see llmops_ocr.api.balance.
balance.TABLE = balance.WorkerTable()

wsgi_app = "llmops_ocr.api.app:create_app()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = [f"127.0.0.1:{int(_cfg.get('port', 8000))}"]
workers = int(_cfg.get("workers", 2))
preload_app = False
# Model loading happens before a worker serves; give it time on a busy host.
timeout = 120
graceful_timeout = 30
keepalive = 5
errorlog = "-"
loglevel = str(_cfg.get("environment", {}).get("LOG_LEVEL", "info")).lower()
# Every request already gets a line in the lb's JSON access log (with its X-Request-ID) and a row
# in the requests table; the API writes its own access lines only at LOG_LEVEL=debug. At 1000+
# requests/s they cost about a tenth of the event loop's CPU and flood the journal.
accesslog = "-" if loglevel == "debug" else None


def on_starting(server: Any) -> None:
    """Start with an empty metrics directory: old workers' files would be counted forever."""
    for f in Path(_METRICS_DIR).glob("*.db"):
        f.unlink(missing_ok=True)


def pre_fork(server: Any, worker: Any) -> None:
    """Give the new worker a slot of the shared table no live worker holds."""
    used = {getattr(w, "llmops_slot", -1) for w in server.WORKERS.values()}
    worker.llmops_slot = balance.TABLE.free_slot(used) if balance.TABLE else None


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: take the slot, so that the app can publish its load there."""
    if balance.TABLE is not None and worker.llmops_slot is not None:
        balance.TABLE.attach(worker.llmops_slot, os.getpid())
        balance.SLOT = worker.llmops_slot


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (ready workers, model load time) and its slot."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _METRICS_DIR)
    if balance.TABLE is not None and getattr(worker, "llmops_slot", None) is not None:
        balance.TABLE.release(worker.llmops_slot)
