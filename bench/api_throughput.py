"""Lines/s of the OCR model in-process with dynamic batching vs through the API, side by side.

    .venv/bin/python bench/api_throughput.py [--seconds 12] [--rounds 4] [--concurrency 1 8 32]

For each concurrency level N, in alternating slices (so both see the same background load):
- in-process: N lines in flight spread over `workers` plain processes (threads_per_worker torch
  threads each: the API's CPU budget, without HTTP or the dynamic batcher), each decoding the PNGs,
  preprocessing and calling Recognizer.predict in batches of up to max_batch_size (N / workers
  lines per call); a line's latency is the time of its whole group;
- API: N keep-alive HTTP/1.1 connections to gunicorn (2 uvicorn workers, 1 torch thread each,
  SQLite request history, no access log: the production default) on 127.0.0.1,
  POST /v1/ocr?mode=line with the same PNGs, same model directory; the first --api-warmup
  seconds of each slice (new connections, the workers evening them out) are not counted.
The load generator runs on the same 2 CPUs as the API, so its CPU counts against the API; it is a
minimal asyncio raw-socket client in one thread, and its CPU per line is reported. Prints a table
(lines/s, p50, p99, lines per model call, CPU per line) and the API / in-process ratio, and the
machine's load average. It never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPO_MODELS = REPO / "apps" / "ocr" / "models"


def default_version() -> str:
    """The API's default model version (both sides run it)."""
    from llmops_ocr.api.settings import ApiSettings

    return ApiSettings.default_version


@dataclass
class Result:
    lines_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_line: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


@dataclass
class Sample:
    latencies: list[float]
    seconds: float
    errors: int
    cpu_s: float = 0.0  # CPU time the serving processes used (robust to other load)
    reconnects: int = 0  # connections the API closed (Connection: close) and the client reopened
    client_cpu_s: float = 0.0  # CPU time of the load generator (this process), API side only


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def summarise(samples: list[Sample]) -> Result:
    latencies = [x for s in samples for x in s.latencies]
    return Result(
        len(latencies) / sum(s.seconds for s in samples),
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        sum(s.errors for s in samples),
        1000 * sum(s.cpu_s for s in samples) / max(1, len(latencies)),
    )


def make_images(n: int) -> list[bytes]:
    import random

    from llmops_ocr.synth import make_text, render_line

    rng = random.Random(42)
    out = []
    for i in range(n):
        img = render_line(make_text(rng, "test", max_chars=32), seed=1000 + i)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def model_dir(tmp: Path) -> tuple[Path, str]:
    """The models dir holding crnn-ocr/<default version>, and which model it is."""
    version = default_version()
    if (REPO_MODELS / "crnn-ocr" / version / "metadata.json").is_file():
        return REPO_MODELS, f"trained (apps/ocr/models/crnn-ocr/{version})"
    import torch
    from llmops_ocr.model import CRNN, save_model_dir

    torch.manual_seed(0)
    save_model_dir(CRNN(), tmp / "models" / "crnn-ocr" / version, "crnn-ocr", version)
    return tmp / "models", "UNTRAINED (same architecture; trained weights not in the repo yet)"


# --- in-process -----------------------------------------------------------------------------


_REC: object = None
_IMAGES: list[bytes] = []


def _child_init(model_path: str, threads: int, images: list[bytes]) -> None:
    global _REC, _IMAGES
    import torch
    from llmops_ocr.recognizer import Recognizer
    from PIL import Image

    torch.set_num_threads(threads)
    _REC = Recognizer.load(model_path)
    _REC.predict([_REC.preprocess(Image.new("L", (64, 32), 255))])  # type: ignore[attr-defined]
    _IMAGES = images


def _child_run(job: tuple[int, int, float, float]) -> tuple[list[float], float]:
    """Groups of ``group`` lines until ``end`` (a time.time()): decode, preprocess, predict."""
    group, max_batch, start_at, seconds = job
    from PIL import Image

    rec = _REC

    def prepare(data: bytes) -> object:
        img = Image.open(io.BytesIO(data))
        img.load()
        return rec.preprocess(img.convert("L"))  # type: ignore[attr-defined]

    while time.time() < start_at:  # start together with the sibling processes
        time.sleep(0.001)
    latencies: list[float] = []
    i = os.getpid()
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        lines = [prepare(_IMAGES[(i + k) % len(_IMAGES)]) for k in range(group)]
        for j in range(0, len(lines), max_batch):
            rec.predict(lines[j : j + max_batch])  # type: ignore[attr-defined]
        latencies.extend([time.perf_counter() - t0] * group)  # each line waits for its group
        i += group
    return latencies, time.perf_counter() - started


def run_in_process(
    pool: Any, workers: int, concurrency: int, max_batch: int, seconds: float
) -> Sample:
    """``concurrency`` lines in flight, spread over up to ``workers`` processes."""
    procs = min(workers, concurrency)
    start_at = time.time() + 0.5
    jobs = [(concurrency // procs, max_batch, start_at, seconds) for _ in range(procs)]
    results = pool.map(_child_run, jobs, chunksize=1)
    latencies = [x for lat, _ in results for x in lat]
    return Sample(latencies, max(t for _, t in results), 0)


# --- through the API ------------------------------------------------------------------------


def http_request(port: int, token: str, data: bytes) -> bytes:
    boundary = "benchboundary7d1"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="l.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/ocr?mode=line HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def run_api(
    port: int,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    warmup: float = 0.0,
    pids: list[int] | None = None,
) -> Sample:
    """``concurrency`` keep-alive clients for ``warmup`` + ``seconds``; only requests started
    after the warm-up (new connections, workers evening them out) count, and the CPU of
    ``pids`` and of this client is measured over the same span."""
    latencies: list[float] = []
    errors = reconnects = 0
    t0 = time.perf_counter()
    counting = t0 + warmup
    end = counting + seconds
    marks: dict[str, float] = {}

    async def client(k: int) -> None:
        nonlocal errors, reconnects
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                await reader.readexactly(length)
                if close:  # the server asked for a new connection (e.g. to even out workers)
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if started >= counting:
                    if close:
                        reconnects += 1
                    if status != 200:
                        errors += 1
                    else:
                        latencies.append(time.perf_counter() - started)
                i += concurrency
        finally:
            writer.close()

    async def meter() -> None:
        await asyncio.sleep(max(0.0, counting - time.perf_counter()))
        marks["t"] = time.perf_counter()
        marks["cpu"] = cpu_seconds(pids or [])
        marks["client"] = time.process_time()

    await asyncio.gather(meter(), *(client(k) for k in range(concurrency)))
    return Sample(
        latencies,
        time.perf_counter() - marks["t"],
        errors,
        cpu_s=cpu_seconds(pids or []) - marks["cpu"],
        reconnects=reconnects,
        client_cpu_s=time.process_time() - marks["client"],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(tmp: Path, models: Path, workers: int, threads: int, batching: dict) -> tuple:
    import httpx
    from llmops_ocr import db
    from sqlalchemy import URL

    db_path = tmp / "db.sqlite3"
    db.migrate(URL.create("sqlite+pysqlite", database=str(db_path)))
    port = free_port()
    creds = tmp / "credentials"
    creds.mkdir()
    token = "bench-" + os.urandom(12).hex()
    (creds / "api-token").write_text(token)
    cfg = {
        "server_type": "api",
        "port": port,
        "environment": {"LOG_LEVEL": "warning"},
        "dependencies": [],
        "workers": workers,
        "threads_per_worker": threads,
        "model": {"name": "crnn-ocr", "version": default_version()},
        "models_dir": str(models),
        "batching": batching,
        "max_upload_bytes": 10485760,
        "database": {"engine": "sqlite", "path": str(db_path)},
    }
    (tmp / "api.json").write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "LLMOPS_CONFIG": str(tmp / "api.json"),
        "CREDENTIALS_DIRECTORY": str(creds),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    log = open(tmp / "gunicorn.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmops_ocr.api.serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"API exited: {(tmp / 'gunicorn.log').read_text()[-3000:]}")
        try:
            text = httpx.get(f"{url}/metrics", timeout=5).text
            ready = [ln for ln in text.splitlines() if ln.startswith("llmops_api_ready_workers ")]
            if ready and float(ready[0].split()[1]) >= workers:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("API not ready after 180 s")
        time.sleep(0.2)
    return proc, port, token, url


def batch_stats(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    vals: dict[str, float] = {}
    for ln in text.splitlines():  # summed over the model versions (only the default gets work)
        if ln.startswith(("llmops_api_batch_size_count", "llmops_api_batch_size_sum")):
            name, value = ln.split()
            key = name.split("{")[0]
            vals[key] = vals.get(key, 0.0) + float(value)
    return vals.get("llmops_api_batch_size_count", 0), vals.get("llmops_api_batch_size_sum", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="measuring time per cell")
    ap.add_argument("--rounds", type=int, default=4, help="alternating slices per cell")
    ap.add_argument(
        "--api-warmup",
        type=float,
        default=0.5,
        help="seconds not counted at the start of each API slice (new connections settle)",
    )
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=int, default=5)
    args = ap.parse_args()

    batching = {
        "max_batch_size": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "max_queue": 1024,
    }
    tmp = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    models, which = model_dir(tmp)
    images = make_images(256)
    port_proc = start_api(tmp / "api", models, args.workers, args.threads_per_worker, batching)
    proc, port, token, url = port_proc
    requests = [http_request(port, token, im) for im in images]

    import multiprocessing

    # Same CPU budget as the API: one process per worker, threads_per_worker torch threads each.
    pool = multiprocessing.get_context("spawn").Pool(
        args.workers,
        initializer=_child_init,
        initargs=(str(models / "crnn-ocr" / default_version()), args.threads_per_worker, images),
    )
    print(f"model: {which}")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"API: {args.workers} workers x {args.threads_per_worker} torch thread(s); in-process: "
        f"{args.workers} processes x {args.threads_per_worker} torch thread(s); "
        f"batching {args.max_batch_size} / {args.max_wait_ms} ms; "
        f"{args.seconds:.0f} s per cell in {args.rounds} alternating slices "
        f"(API slices: +{args.api_warmup} s warm-up); line images of up to 32 characters (PNG)"
    )
    rows = []
    loads = [os.getloadavg()[0]]
    pool_pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
    api_pids = children(proc.pid)
    try:
        # Warm both paths once (thread pools, connections, allocator).
        run_in_process(pool, args.workers, 4, args.max_batch_size, 1.0)
        asyncio.run(run_api(port, requests, 4, 1.0))
        for c in args.concurrency:
            # Alternate short slices of both, so that load from other processes on the machine
            # falls on both sides alike.
            ins, outs = [], []
            n0, s0 = batch_stats(url)
            for _ in range(args.rounds):
                piece = args.seconds / args.rounds
                cpu0 = cpu_seconds(pool_pids)
                ins.append(run_in_process(pool, args.workers, c, args.max_batch_size, piece))
                ins[-1].cpu_s = cpu_seconds(pool_pids) - cpu0
                outs.append(
                    asyncio.run(run_api(port, requests, c, piece, args.api_warmup, api_pids))
                )
                loads.append(os.getloadavg()[0])
            n1, s1 = batch_stats(url)
            inproc, api = summarise(ins), summarise(outs)
            mean_batch = (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan")
            client_cpu = sum(o.client_cpu_s for o in outs)
            lines = sum(len(o.latencies) for o in outs)
            reconnects = sum(o.reconnects for o in outs)
            rows.append((c, inproc, api, mean_batch, 1000 * client_cpu / max(1, lines), reconnects))
            print(
                f"  c={c}: in-process {inproc.lines_per_s:.1f}/s, API {api.lines_per_s:.1f}/s",
                flush=True,
            )
    finally:
        pool.terminate()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    print()
    print(
        "| concurrency | in-process lines/s | p50 ms | p99 ms | batch "
        "| API lines/s | p50 ms | p99 ms | mean batch | API / in-process "
        "| CPU ms/line in-process | API | client | reconnects |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, a, b, mb, client_ms, reconnects in rows:
        group = c // min(args.workers, c)
        print(
            f"| {c} | {a.lines_per_s:.1f} | {a.p50_ms:.1f} | {a.p99_ms:.1f} "
            f"| {min(group, args.max_batch_size)} "
            f"| {b.lines_per_s:.1f} | {b.p50_ms:.1f} | {b.p99_ms:.1f} | {mb:.1f} "
            f"| **{b.lines_per_s / a.lines_per_s:.0%}** "
            f"| {a.cpu_ms_per_line:.2f} | {b.cpu_ms_per_line:.2f} | {client_ms:.2f} "
            f"| {reconnects} |"
        )
    print(
        "(batch: lines per model call; CPU ms/line: user+system CPU of the 2 in-process "
        "processes / of the 2 API workers / of this load generator, per line; reconnects: "
        "connections the API closed to even out its workers, counted after the warm-up)"
    )
    errs = sum(a.errors + b.errors for _, a, b, _, _, _ in rows)
    if errs:
        print(f"errors: {errs} requests failed")
    loads.append(os.getloadavg()[0])
    print(
        f"load average (1 min) during the run: min {min(loads):.1f}, mean "
        f"{sum(loads) / len(loads):.1f}, max {max(loads):.1f}"
    )


if __name__ == "__main__":
    main()
