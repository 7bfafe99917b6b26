"""The API's building blocks on their own: dynamic batcher, history writer, settings."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from llmops_ocr import db
from llmops_ocr.api.app import ApiState
from llmops_ocr.api.auth import Authenticator
from llmops_ocr.api.balance import SHED_INTERVAL_S, WINDOW_S, Balancer, WorkerTable
from llmops_ocr.api.batching import DynamicBatcher, QueueFullError
from llmops_ocr.api.history import HistoryWriter
from llmops_ocr.api.ocr_endpoint import BadRequestError, OcrEndpoint, parse_multipart
from llmops_ocr.api.registry import LoadedModel
from llmops_ocr.api.settings import ApiSettings
from llmops_ocr.config import ConfigError
from prometheus_client import REGISTRY
from sqlalchemy import URL, func, select


def _echo(batches: list[int]):  # type: ignore[no-untyped-def]
    def predict(items: list[object]) -> list[tuple[str, float]]:
        batches.append(len(items))
        return [(str(i), 0.5) for i in items]

    return predict


def test_concurrent_submits_are_batched_and_answered_in_order() -> None:
    batches: list[int] = []
    b = DynamicBatcher(_echo(batches), max_batch_size=8, max_wait_ms=200, max_queue=64)

    async def request(r: int) -> list[tuple[str, float]]:
        with b.incoming():  # still receiving the upload
            await asyncio.sleep(0.01 * r)
        results, extra = await b.submit([f"{r}-{i}" for i in range(2)])
        assert extra is None
        return results

    async def main() -> list[list[tuple[str, float]]]:
        return await asyncio.gather(*(request(r) for r in range(6)))

    try:
        results = asyncio.run(main())
    finally:
        b.close()
    assert results == [[(f"{r}-0", 0.5), (f"{r}-1", 0.5)] for r in range(6)]
    assert batches == [8, 4]  # 12 lines of 6 requests in two model calls of <= max_batch_size


def test_a_lone_request_does_not_wait_for_company() -> None:
    batches: list[int] = []
    b = DynamicBatcher(_echo(batches), max_batch_size=8, max_wait_ms=5000, max_queue=8)
    try:
        started = time.monotonic()
        assert asyncio.run(b.submit(["only"])) == ([("only", 0.5)], None)
        assert time.monotonic() - started < 2.5  # far below max_wait_ms
    finally:
        b.close()


def test_clients_that_come_back_are_waited_for_and_fill_the_batch() -> None:
    # Eight closed-loop clients (keep-alive connections): each sends its next request as soon as
    # the last one is answered. One arrives first and runs alone; the other seven queue up
    # meanwhile. Without waiting for the returning client the batches would keep alternating
    # 7, 1, 7, 1 (and under load n/2, n/2); with it they merge into full batches.
    batches: list[int] = []

    def slow(items: list[object]) -> list[tuple[str, float]]:
        time.sleep(0.02)
        return _echo(batches)(items)

    b = DynamicBatcher(slow, max_batch_size=8, max_wait_ms=2000, max_queue=64)

    async def client(k: int) -> None:
        await asyncio.sleep(0 if k == 0 else 0.005)
        for r in range(8):
            assert await b.submit([f"{k}-{r}"], client=("127.0.0.1", 40000 + k)) == (
                [(f"{k}-{r}", 0.5)],
                None,
            )

    async def main() -> None:
        await asyncio.gather(*(client(k) for k in range(8)))

    try:
        started = time.monotonic()
        asyncio.run(main())
        took = time.monotonic() - started
    finally:
        b.close()
    assert sum(batches) == 64
    # The first client runs alone; then every batch is full but the last (its 7 remaining).
    assert batches == [1] + [8] * 7 + [7], batches
    assert took < 5  # no max_wait_ms (2 s) was spent waiting in vain


def test_a_trickling_cohort_is_waited_for_up_to_four_times_max_wait() -> None:
    # 12 requests on their way, arriving 120 ms apart (a busy host): each arrival extends the
    # wait by max_wait_ms (250 ms), so they are not cut into batches of 2-3, but the whole wait
    # stops after 4 x max_wait_ms (1 s, about 9 arrivals).
    batches: list[int] = []
    b = DynamicBatcher(_echo(batches), max_batch_size=16, max_wait_ms=250, max_queue=64)

    async def request(k: int) -> None:
        with b.incoming():
            await asyncio.sleep(0.12 * k)
        await b.submit([str(k)])

    async def main() -> None:
        await asyncio.gather(*(request(k) for k in range(12)))

    try:
        asyncio.run(main())
    finally:
        b.close()
    assert sum(batches) == 12
    assert 4 <= batches[0] <= 10, batches


def test_one_off_clients_are_not_waited_for() -> None:
    # A new connection per request (no keep-alive): its address never comes back, so after a
    # few batches the batcher stops expecting it and a request runs at once.
    batches: list[int] = []
    b = DynamicBatcher(_echo(batches), max_batch_size=8, max_wait_ms=300, max_queue=8)

    async def main() -> list[float]:
        took = []
        for k in range(30):
            started = time.monotonic()
            await b.submit([str(k)], client=("127.0.0.1", 50000 + k))
            took.append(time.monotonic() - started)
        return took

    try:
        took = asyncio.run(main())
    finally:
        b.close()
    assert batches == [1] * 30
    assert max(took[10:]) < 0.15, took  # far below max_wait_ms once it learned


def test_a_worker_with_more_clients_hands_some_over() -> None:
    table = WorkerTable(slots=4)
    table.attach(0, 1001)
    table.attach(1, 1002)
    now = 100.0
    table.publish(1, 4, now)  # the other worker serves 4 clients
    busy = Balancer(table, 0)
    closed = []
    step = SHED_INTERVAL_S / 4
    for k in range(12):  # 12 clients arrive here: hand some over, at most one per interval
        now += step
        if busy.should_close(("10.0.0.1", 3000 + k), now):
            closed.append(k)
    assert closed, "the busy worker closed no connection"
    assert closed[0] == 6  # the 7th client is 3 above the other worker's 4
    assert len(closed) >= 2
    assert all(b - a >= 4 for a, b in itertools.pairwise(closed))  # >= SHED_INTERVAL_S apart
    assert table.clients(0, now) == 12 - len(closed)
    # The other worker took them: balanced within two clients, nobody is handed over.
    now += 0.1
    table.publish(1, table.clients(0, now) - 2, now)
    assert not busy.should_close(("10.0.0.1", 3000), now)
    # A worker whose count is old had no requests since: it has no clients, hand it some.
    now += WINDOW_S + 0.1
    assert table.clients(1, now) == 0
    assert any(busy.should_close(("10.0.0.1", 3000 + k), now + 0.011 * k) for k in range(8))
    # A lone worker (the other one's slot released) keeps all of its clients.
    table.release(1)
    assert not busy.should_close(("10.0.0.1", 3001), now + 0.2)


def test_full_queue_refuses_new_requests() -> None:
    gate, in_model = threading.Event(), threading.Event()
    batches: list[int] = []

    def slow(items: list[object]) -> list[tuple[str, float]]:
        in_model.set()
        gate.wait(10)
        return _echo(batches)(items)

    b = DynamicBatcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=2)

    async def main() -> None:
        first = asyncio.ensure_future(b.submit(["a", "b", "c"]))
        # The thread took the first job and is busy in the model: the queue is empty.
        assert await asyncio.to_thread(in_model.wait, 5)
        queued = [asyncio.ensure_future(b.submit([x])) for x in ("d", "e")]
        deadline = time.monotonic() + 5
        while b.qsize() < 2:  # both are queued once their tasks ran
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        with pytest.raises(QueueFullError, match="queue full"):
            await b.submit(["f"])
        gate.set()
        assert await first == ([("a", 0.5), ("b", 0.5), ("c", 0.5)], None)
        assert [await q for q in queued] == [([("d", 0.5)], None), ([("e", 0.5)], None)]

    try:
        asyncio.run(main())
    finally:
        gate.set()
        b.close()
    assert batches == [1, 1, 1, 1, 1]


def test_a_bad_job_fails_alone_and_a_model_error_fails_its_batch() -> None:
    calls = 0

    def prepare(payload: str) -> tuple[list[str], str]:
        if payload == "bad":
            raise ValueError("not an image")
        return [payload], f"meta-{payload}"

    def flaky(items: list[object]) -> list[tuple[str, float]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return [("ok", 1.0) for _ in items]

    b = DynamicBatcher(flaky, prepare=prepare, max_batch_size=4, max_wait_ms=50, max_queue=8)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit("x")
        r = await asyncio.gather(b.submit("bad"), b.submit("y"), return_exceptions=True)
        assert isinstance(r[0], ValueError)
        assert r[1] == ([("ok", 1.0)], "meta-y")

    try:
        asyncio.run(main())
    finally:
        b.close()
    assert b.alive is False


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung database server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    try:
        yield int(srv.getsockname()[1])
    finally:
        srv.close()


def test_history_writer_never_blocks_on_a_hung_database(blackhole: int) -> None:
    url = URL.create(
        "postgresql+psycopg", username="u", password="p", host="127.0.0.1", port=blackhole
    )
    engine = db.make_engine(url, connect_args={"connect_timeout": 2})
    w = HistoryWriter(engine, max_queue=10)
    started = time.monotonic()
    for i in range(50):  # more than the queue holds: the rest is dropped, not waited for
        w.record(client="token", status_code=200, lines=i)
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    w.close(timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_history_writer_writes_to_sqlite(tmp_path: Path) -> None:
    url = URL.create("sqlite+pysqlite", database=str(tmp_path / "h.sqlite3"))
    db.migrate(url)
    engine = db.make_engine(url)
    w = HistoryWriter(engine)
    for i in range(5):
        w.record(client="token", status_code=200, lines=i, model_version="1.0.0", mode="line")
    w.close(timeout=10)
    check = db.make_engine(url)
    with check.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(db.Request)) == 5
    check.dispose()


def test_settings_reject_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"batching\.max_batch_size"):
        ApiSettings.from_config({"batching": {"max_batch_size": 0}})
    s = ApiSettings.from_config(
        {"model": {"name": "m", "version": "2.0.0"}, "models_dir": "/x", "max_upload_bytes": 9}
    )
    assert (s.model_name, s.default_version, s.models_dir, s.max_upload_bytes) == (
        "m",
        "2.0.0",
        Path("/x"),
        9,
    )


def _multipart(*parts: tuple[str, bytes], boundary: str = "b0undary") -> bytes:
    out = b"preamble ignored\r\n"
    for disposition, content in parts:
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_multipart_parser_finds_the_file_part() -> None:
    body = _multipart(
        ('form-data; name="note"', b"hello"),
        ('form-data; name="file"; filename="a;b \\"c\\".png"', b"\x89PNG\r\n--not-it\r\n"),
    )
    ctype = 'multipart/form-data; charset=utf-8; boundary="b0undary"'
    assert parse_multipart(body, ctype) == b"\x89PNG\r\n--not-it\r\n"


@pytest.mark.parametrize(
    ("body", "ctype", "message"),
    [
        (
            _multipart(('form-data; name="file"', b"x")),
            "multipart/form-data; boundary=b0undary",
            "no file field named 'file'",
        ),
        (
            _multipart(('form-data; name="image"; filename="x"', b"x")),
            "multipart/form-data; boundary=b0undary",
            "no file field named 'file'",
        ),
        (
            _multipart(
                ('form-data; name="file"; filename="x"', b"x"),
                ('form-data; name="file"; filename="y"', b"y"),
            ),
            "multipart/form-data; boundary=b0undary",
            "exactly one file",
        ),
        (
            _multipart(*[('form-data; name="f"', b"x")] * 9),
            "multipart/form-data; boundary=b0undary",
            "more than 8 parts",
        ),
        (
            _multipart(('form-data; name="f"', b"x" * 70_000)),
            "multipart/form-data; boundary=b0undary",
            "larger than",
        ),
        (
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nab',
            "multipart/form-data; boundary=b0undary",
            "not terminated",
        ),
        (b"no delimiter at all", "multipart/form-data; boundary=b0undary", "never appears"),
        (b"--x--", "multipart/form-data", "no boundary"),
    ],
)
def test_multipart_parser_refuses_malformed_bodies_with_400(
    body: bytes, ctype: str, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message) as err:
        parse_multipart(body, ctype)
    assert err.value.status == 400


def _post_ocr(endpoint: OcrEndpoint, token: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One POST /v1/ocr?mode=line straight into ``endpoint.direct`` (as ApiApp calls it)."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="l.png"\r\n'
        f"Content-Type: image/png\r\n\r\nPNGBYTES\r\n--{boundary}--\r\n"
    ).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/ocr",
        "query_string": b"mode=line",
        "client": ("10.0.0.9", 4242),
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(endpoint.direct(scope, receive, send))  # type: ignore[arg-type]
    start, end = sent
    headers = dict(start["headers"])  # type: ignore[call-overload]
    return int(start["status"]), headers, end["body"]  # type: ignore[call-overload, return-value]


def _requests_total(status: str) -> float:
    value = REGISTRY.get_sample_value(
        "llmops_api_requests_total", {"method": "POST", "route": "/v1/ocr", "status": status}
    )
    return value or 0.0


def test_the_direct_ocr_path_does_what_the_middleware_does_for_other_routes() -> None:
    """POST /v1/ocr skips FastAPI's middleware: it counts itself, sheds clients, answers 500."""
    token = "t0ken"

    def prepare(payload: tuple[bytes, str]) -> tuple[list[object], list[list[int]]]:
        data, _ = payload
        assert data == b"PNGBYTES"
        return [data], [[0, 0, 1, 1]]

    fail = threading.Event()

    def predict(items: list[object]) -> list[tuple[str, float]]:
        if fail.is_set():
            raise RuntimeError("model exploded")
        return [("hello", 0.9) for _ in items]

    batcher = DynamicBatcher(predict, prepare=prepare, max_batch_size=4, max_wait_ms=1, max_queue=4)
    settings = ApiSettings(default_version="9.9.9")
    recognizer: Any = SimpleNamespace(name="crnn-ocr")
    state = ApiState(
        settings=settings,
        authenticator=Authenticator(token, None),
        models={"9.9.9": LoadedModel(recognizer, batcher, 0.0)},
    )
    table = WorkerTable(slots=2)
    table.attach(0, 1001)
    table.attach(1, 1002)
    balancer = Balancer(table, 0)
    endpoint = OcrEndpoint(state, balancer)
    try:
        before = _requests_total("200"), _requests_total("500"), _requests_total("401")
        status, headers, body = _post_ocr(endpoint, token)
        assert status == 200, body
        assert json.loads(body)["text"] == "hello"
        assert b"connection" not in headers
        assert _post_ocr(endpoint, "wrong")[0] == 401
        # A worker far busier than the other one asks this client to reconnect.
        now = time.monotonic()
        for k in range(6):
            balancer.should_close(("10.0.0.1", 5000 + k), now - 1)
        table.publish(1, 0, now)
        status, headers, _ = _post_ocr(endpoint, token)
        assert (status, headers.get(b"connection")) == (200, b"close")
        fail.set()
        status, headers, body = _post_ocr(endpoint, token)
        assert status == 500
        assert headers[b"content-type"] == b"application/json"
        assert json.loads(body) == {"detail": "Internal Server Error"}
        after = _requests_total("200"), _requests_total("500"), _requests_total("401")
        assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    finally:
        batcher.close()
