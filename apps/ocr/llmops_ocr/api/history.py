"""Request history written to the database by a background thread, never on the request path.

Requests hand a record to ``HistoryWriter.record`` (a non-blocking put on a bounded queue).
When the database is slow or down the queue fills and further records are dropped and counted
(``llmops_api_history_dropped_total``); OCR requests are never failed or delayed by it.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from typing import Any

from sqlalchemy import Engine, update

from llmops_ocr.api import metrics
from llmops_ocr.db import ApiKey, store

log = logging.getLogger(__name__)

_STOP = object()


class HistoryWriter:
    """Bounded queue + one writer thread that inserts request records in small batches."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 1000,
        max_batch: int = 500,
        max_backoff_s: float = 30.0,
        linger_s: float = 0.25,
    ) -> None:
        self.engine = engine
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._max_batch = max_batch
        self._max_backoff = max_backoff_s
        self._linger_s = linger_s
        self._stop = threading.Event()
        self._closing = threading.Event()  # cuts the linger short at shutdown
        self._last_error_log = 0.0
        self._thread = threading.Thread(target=self._run, name="history-writer", daemon=True)
        self._thread.start()

    def record(self, **row: Any) -> None:
        """Queue one row of the requests table; drop it (and count) if the queue is full."""
        row.setdefault("created_at", dt.datetime.now(dt.UTC))
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            metrics.HISTORY_DROPPED.labels("queue_full").inc()

    def _take(self) -> tuple[list[dict[str, Any]], bool]:
        """Block for the next rows; returns (rows, stop_after_writing)."""
        item = self._queue.get()
        if item is _STOP:
            return [], True
        rows = [item]
        # Let the rows of the next moment queue up too, then take them all: one transaction
        # (one fsync) for many rows, and this thread is not woken once per request meanwhile.
        self._closing.wait(self._linger_s)
        while len(rows) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return rows, True
            rows.append(item)
        return rows, False

    def _write(self, rows: list[dict[str, Any]]) -> None:
        key_ids = sorted({r["api_key_id"] for r in rows if r.get("api_key_id") is not None})
        store.record_requests(self.engine, rows)
        if not key_ids:
            return
        try:  # best effort: the history rows are in, never insert them twice
            with self.engine.begin() as conn:
                conn.execute(
                    update(ApiKey)
                    .where(ApiKey.id.in_(key_ids))
                    .values(last_used_at=max(r["created_at"] for r in rows))
                )
        except Exception as exc:
            log.warning("request history: cannot update api_keys.last_used_at: %s", exc)

    def _log_error(self, exc: Exception, n: int) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            log.warning(
                "request history: cannot write %d record(s) to the database (%s); "
                "OCR keeps working, records are retried then dropped when the queue is full",
                n,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )

    def _run(self) -> None:
        backoff = 0.5
        while True:
            rows, last = self._take()
            while rows:
                try:
                    self._write(rows)
                except Exception as exc:
                    self._log_error(exc, len(rows))
                    # Retry the same rows after a growing pause; meanwhile new records queue up
                    # (and are dropped once the queue is full). Shutdown ends the retries.
                    if self._stop.wait(backoff):
                        metrics.HISTORY_DROPPED.labels("shutdown").inc(len(rows))
                        return
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                metrics.HISTORY_WRITTEN.inc(len(rows))
                backoff = 0.5
                rows = []
            if last:
                return

    def close(self, timeout: float = 3.0) -> None:
        """Flush what is queued within ``timeout`` seconds; the rest is dropped."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            self._stop.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()  # a writer still retrying against a dead database gives up now
        self._thread.join(0.5)
        left = self._queue.qsize()
        if left:
            metrics.HISTORY_DROPPED.labels("shutdown").inc(left)
        self.engine.dispose()
