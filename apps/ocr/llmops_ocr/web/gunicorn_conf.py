"""gunicorn settings of the web app: ``gunicorn -c python:llmops_ocr.web.gunicorn_conf
'llmops_ocr.web.app:create_app()'``.

Bind address and workers come from the web config unless given on the command line
(``--bind`` wins). Prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (the unit sets it to
its RuntimeDirectory; otherwise a fresh temporary directory) is emptied at start and dead
workers' files are marked, so /metrics adds up all live workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmops_ocr.config import ConfigError, load_config

try:
    _cfg = load_config("web")
except ConfigError:
    _cfg = {}

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llmops-web-prom-")

bind = os.environ.get("LLMOPS_WEB_BIND", f"127.0.0.1:{_cfg.get('port', 8080)}")
workers = int(_cfg.get("workers", 2))
# A worker waits at most api_timeout_s for the API; give it room beyond that before killing it.
timeout = int(float(_cfg.get("api_timeout_s", 30))) + 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"


def on_starting(server: Any) -> None:
    d = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    for p in d.iterdir():
        if p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
