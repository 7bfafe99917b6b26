"""Real servers for the web tests: the inference API and the web app, each under gunicorn."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from conftest import free_port

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
TRAINED = REPO_MODELS / "crnn-ocr" / "1.0.0"
START_TIMEOUT_S = 180.0


def has_trained_model() -> bool:
    """True when the project's trained weights are in the repo (the model issue ships them)."""
    return (TRAINED / "metadata.json").is_file() and (TRAINED / "model.pt").is_file()


def make_models_dir(dest: Path) -> Path:
    """``dest/crnn-ocr/1.0.0``: the trained model when present, else untrained weights."""
    target = dest / "crnn-ocr" / "1.0.0"
    if has_trained_model():
        shutil.copytree(TRAINED, target)
    else:
        import torch
        from llmops_ocr.model import CRNN, save_model_dir

        torch.manual_seed(0)
        save_model_dir(CRNN(), target, "crnn-ocr", "1.0.0", {"note": "untrained, for tests"})
    return dest


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _start(
    name: str, cmd: list[str], env: dict[str, str], url: str, ready: str, log: Path
) -> Server:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, url, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + ready, timeout=5).status_code == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"{name} not ready after {START_TIMEOUT_S}s:\n{server.log_tail()}")
        time.sleep(0.2)


def start_api(tmp: Path, models_dir: Path, token: str, *, workers: int = 1) -> Server:
    """The inference API (gunicorn + uvicorn workers) on a free port; ready = /readyz."""
    tmp.mkdir(parents=True, exist_ok=True)
    creds = tmp / "api-credentials"
    creds.mkdir(exist_ok=True)
    (creds / "api-token").write_text(token + "\n")
    port = free_port()
    cfg: dict[str, Any] = {
        "server_type": "api",
        "port": port,
        "environment": {"LOG_LEVEL": "warning"},
        "dependencies": [],
        "workers": workers,
        "threads_per_worker": 1,
        "model": {"name": "crnn-ocr", "version": "1.0.0"},
        "models_dir": str(models_dir),
        "batching": {"max_batch_size": 16, "max_wait_ms": 5, "max_queue": 64},
        "max_upload_bytes": 10 * 1024 * 1024,
    }
    (tmp / "api.json").write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "LLMOPS_CONFIG": str(tmp / "api.json"),
        "CREDENTIALS_DIRECTORY": str(creds),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "api-metrics"),
    }
    cmd = [sys.executable, "-m", "llmops_ocr.api.serve", "--access-logfile", "/dev/null"]
    return _start("API", cmd, env, f"http://127.0.0.1:{port}", "/readyz", tmp / "api.log")


def start_web(tmp: Path, config: Path, credentials: Path, *, workers: int = 2) -> Server:
    """The web app under gunicorn with plain-http cookies (no TLS in front); ready = /healthz."""
    port = free_port()
    env = {
        **os.environ,
        "LLMOPS_CONFIG": str(config),
        "CREDENTIALS_DIRECTORY": str(credentials),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "web-metrics"),
        "LLMOPS_WEB_INSECURE_COOKIES": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:llmops_ocr.web.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--access-logfile",
        "/dev/null",
        "llmops_ocr.web.app:create_app()",
    ]
    return _start("web app", cmd, env, f"http://127.0.0.1:{port}", "/healthz", tmp / "web.log")


def new_token() -> str:
    return secrets.token_urlsafe(24)
