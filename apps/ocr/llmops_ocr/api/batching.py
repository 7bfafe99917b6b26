"""Dynamic batching of line crops across concurrent requests.

Requests put their preprocessed line tensors on a bounded queue and await futures; one inference
thread per model version takes up to ``max_batch_size`` items, waiting at most ``max_wait_ms``
after the first one -- and only while other requests are known to be on their way (see
``incoming``), so a lone request is not delayed -- runs a single padded forward pass and
resolves the futures on the event loop. The event loop never runs the model itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PredictFn = Callable[[list[Any]], Sequence[tuple[str, float]]]
BatchObserver = Callable[[int, list[float], float], None]
"""Called after each batch with (batch size, queue waits in seconds, inference seconds)."""


class QueueFullError(Exception):
    """The batch queue has no room for the request; the client should retry later."""


class BatcherStoppedError(Exception):
    """The batcher is shutting down and takes no more work."""


@dataclass
class _Item:
    tensor: Any
    future: asyncio.Future[tuple[str, float]]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)


def _hand_over(item: _Item, result: Any, error: bool) -> None:
    # RuntimeError: the event loop is gone (worker shutting down), nobody is waiting.
    with contextlib.suppress(RuntimeError):
        item.loop.call_soon_threadsafe(_resolve, item.future, result, error)


def _resolve(fut: asyncio.Future[tuple[str, float]], result: Any, error: bool) -> None:
    if fut.done():  # the request was cancelled (client went away)
        return
    if error:
        fut.set_exception(result)
    else:
        fut.set_result(result)


class DynamicBatcher:
    """Batches items from many requests into single model calls on a worker thread."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        lock: threading.Lock | None = None,
        observer: BatchObserver | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        # One lock shared by all batchers of a process: versions take turns on the CPU instead
        # of oversubscribing the threads torch was given.
        self.lock = lock or threading.Lock()
        self._observer = observer
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._incoming = 0  # requests still reading or preprocessing, whose lines will follow
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The inference thread runs and takes work."""
        return self._thread.is_alive() and not self._stopping

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request whose lines are being prepared: a batch waits for them (up to
        max_wait_ms), while with nobody on the way a lone line is run at once."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify()

    async def submit(self, tensors: Sequence[Any]) -> list[tuple[str, float]]:
        """Queue all tensors of one request at once and wait for their results (in order).

        Raises QueueFullError if they do not fit; a request is always admitted when the queue is
        empty so that a page with more lines than ``max_queue`` still gets served.
        """
        if not tensors:
            return []
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future(), loop) for t in tensors]
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the model is shutting down")
            if self._items and len(self._items) + len(items) > self.max_queue:
                raise QueueFullError(
                    f"inference queue full ({len(self._items)} of {self.max_queue} lines queued)"
                )
            self._items.extend(items)
            self._cond.notify()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except asyncio.CancelledError:
            for i in items:
                i.future.cancel()
            raise

    def _take_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._items and not self._stopping:
                self._cond.wait()
            if not self._items:
                return None
            deadline = self._items[0].enqueued + self.max_wait_s
            while (
                len(self._items) < self.max_batch_size and self._incoming > 0 and not self._stopping
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(self.max_batch_size, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [i for i in batch if not i.future.cancelled()]
            if not live:
                continue
            started = time.monotonic()
            waits = [started - i.enqueued for i in live]
            try:
                with self.lock:
                    results = list(self._predict([i.tensor for i in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"model returned {len(results)} results for {len(live)}")
            except Exception as exc:  # hand the failure to every waiting request
                log.exception("inference failed for a batch of %d", len(live))
                for i in live:
                    _hand_over(i, exc, True)
                continue
            took = time.monotonic() - started
            for i, r in zip(live, results, strict=True):
                _hand_over(i, r, False)
            if self._observer is not None:
                try:
                    self._observer(len(live), waits, took)
                except Exception:
                    log.exception("batch observer failed")

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
