"""Dynamic batching of line crops across concurrent requests.

A request puts its job (the uploaded bytes) on a bounded queue and awaits a future. One thread
per model version takes up to ``max_batch_size`` jobs -- waiting, once it is free to run a batch
and only while more requests are known or expected to be on their way (so a lone request is not
delayed), until ``max_wait_ms`` pass without a new arrival, at most 4 x ``max_wait_ms`` in all --
prepares them (decode, split a page into lines, preprocess), runs
all their lines through the model in padded batches of up to ``max_batch_size`` lines of similar
width, and resolves the futures on the event loop. The event loop never decodes images or runs
the model; preparing on the batch thread (not on one thread per request) lets the lines of many
requests meet in one model call, which is where batching saves CPU.

"On their way" are requests still receiving their upload (``incoming``) and, when the caller
names the client (its connection), the clients served by the last two batches that have not sent
their next request yet. Closed-loop clients (keep-alive connections, an upstream proxy's
connection pool) otherwise split into two half-size batches that alternate: the clients of one
batch send their next requests while the other batch computes, and the batch thread, free again,
would take just those. Waiting the few milliseconds they need to come back makes one full batch,
which costs the model far less CPU per line. Callers whose connections do not come back (a new
connection per request) are noticed and not waited for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Result = tuple[str, float]
PredictFn = Callable[[list[Any]], Sequence[Result]]
PrepareFn = Callable[[Any], tuple[list[Any], Any]]
"""A job's payload -> (line tensors, anything the request wants back, e.g. the boxes)."""
BatchObserver = Callable[[int, list[float], float], None]
"""Called after each model call with (lines, queue waits of the jobs in seconds, seconds)."""


class QueueFullError(Exception):
    """The batch queue has no room for the request; the client should retry later."""


class BatcherStoppedError(Exception):
    """The batcher is shutting down and takes no more work."""


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future[tuple[list[Result], Any]]
    loop: asyncio.AbstractEventLoop
    client: Hashable | None = None
    enqueued: float = field(default_factory=time.monotonic)


# A client counts as coming back if one of its jobs was in the last RECENT_BATCHES batches.
RECENT_BATCHES = 2
# Wait for returning clients only while most clients do come back (an exponential average over
# clients coming back vs. dropping out), i.e. while waiting for them pays off.
MIN_RETURN_RATE = 0.5
# While requests keep arriving, a batch waits at most this many times max_wait_ms in all.
MAX_WAIT_FACTOR = 4


def _hand_over(done: list[tuple[_Job, Any, bool]]) -> None:
    """Resolve the futures of (job, result or exception, is_error): one wake-up per event loop
    (a worker has one), not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, bool]]] = {}
    for item in done:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        # RuntimeError: the event loop is gone (worker shutting down), nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


def _resolve(items: list[tuple[_Job, Any, bool]]) -> None:
    for job, result, error in items:
        fut = job.future
        if fut.done():  # the request was cancelled (client went away)
            continue
        if error:
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _no_prepare(payload: Any) -> tuple[list[Any], Any]:
    return list(payload), None


def _width(t: Any) -> int:
    shape = getattr(t, "shape", None)
    return int(shape[-1]) if shape else 0


class DynamicBatcher:
    """Batches the lines of many requests into single model calls on a worker thread."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        prepare: PrepareFn | None = None,
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
        self._prepare = prepare or _no_prepare
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        # One lock shared by all batchers of a process: versions take turns on the CPU instead
        # of oversubscribing the threads torch was given.
        self.lock = lock or threading.Lock()
        self._observer = observer
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._incoming = 0  # requests still receiving their upload; their jobs will follow
        self._batch_no = 0
        self._recent: dict[Hashable, int] = {}  # client -> number of the last batch it was in
        self._return_rate = 1.0  # how often a client of the last batches came back (average)
        # The batch thread sleeps until this many jobs are queued (or a deadline): submit()
        # wakes it only then, not once per arrival (a context switch each on a busy host).
        self._want = 1
        self._last_arrival = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The batch thread runs and takes work."""
        return self._thread.is_alive() and not self._stopping

    def qsize(self) -> int:
        """Jobs waiting (not yet taken by the batch thread)."""
        with self._cond:
            return len(self._jobs)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request whose job is on its way: a batch waits for it (up to max_wait_ms)."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                if not self._incoming:  # the batch thread may have waited for these
                    self._cond.notify()

    async def submit(
        self, payload: Any, client: Hashable | None = None
    ) -> tuple[list[Result], Any]:
        """Queue one request's job; returns (one result per line, what prepare passed back).

        ``client`` names where the request came from (e.g. its connection's address and port)
        so that the batcher can expect the client's next request. Raises QueueFullError when
        ``max_queue`` jobs are already waiting, and whatever ``prepare`` raised for this job
        (e.g. an HTTPException for a bad image).
        """
        loop = asyncio.get_running_loop()
        job = _Job(payload, loop.create_future(), loop, client)
        with self._cond:
            if self._stopping:
                raise BatcherStoppedError("the model is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFullError(
                    f"inference queue full ({len(self._jobs)} of {self.max_queue} requests waiting)"
                )
            self._jobs.append(job)
            self._last_arrival = job.enqueued
            if len(self._jobs) >= self._want:
                self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.future.cancel()
            raise

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            # Counted from now, not from the first job's arrival: jobs that queued up while the
            # last batch computed would otherwise never wait for the rest of their cohort. Each
            # arrival extends the wait by max_wait_ms again (a cohort trickles in on a busy
            # host), up to MAX_WAIT_FACTOR * max_wait_ms in all.
            now = time.monotonic()
            deadline, cap = now + self.max_wait_s, now + MAX_WAIT_FACTOR * self.max_wait_s
            while len(self._jobs) < self.max_batch_size and not self._stopping:
                missing = self._missing()
                if not missing and not self._incoming:
                    break
                now = time.monotonic()
                deadline = min(cap, max(deadline, self._last_arrival + self.max_wait_s))
                if deadline <= now:
                    break
                # Woken by the job that completes the cohort, the last upload arriving, or
                # the deadline (then extended if jobs came in meanwhile).
                self._want = len(self._jobs) + missing if missing else self.max_batch_size
                self._cond.wait(deadline - now)
            self._want = 1
            n = min(self.max_batch_size, len(self._jobs))
            jobs = [self._jobs.popleft() for _ in range(n)]
            self._remember(jobs)
            return jobs

    def _missing(self) -> int:
        """Clients of the last batches with no job queued yet, if such clients come back."""
        if self._return_rate < MIN_RETURN_RATE or not self._recent:
            return 0
        queued = {j.client for j in self._jobs}
        return sum(1 for c in self._recent if c not in queued)

    def _remember(self, jobs: list[_Job]) -> None:
        """Note the clients of a batch taken; clients not seen for a while count as gone."""
        self._batch_no += 1
        for job in jobs:
            if job.client is None:
                continue
            if job.client in self._recent:  # came back
                self._return_rate += 0.1 * (1.0 - self._return_rate)
            self._recent[job.client] = self._batch_no
        oldest = self._batch_no - RECENT_BATCHES
        gone = [c for c, n in self._recent.items() if n <= oldest]
        for c in gone:  # did not come back
            del self._recent[c]
            self._return_rate -= 0.1 * self._return_rate

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            live = [j for j in jobs if not j.future.cancelled()]
            if live:
                with self.lock:
                    self._process(live)

    def _process(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        waits = [started - j.enqueued for j in jobs]
        done: list[tuple[_Job, Any, bool]] = []
        prepared: list[tuple[_Job, list[Any], Any]] = []
        for job in jobs:
            try:
                tensors, extra = self._prepare(job.payload)
            except Exception as exc:  # this request's own problem (bad image, ...)
                done.append((job, exc, True))
                continue
            prepared.append((job, tensors, extra))
        if done:  # bad uploads get their answer now, not after the model call
            _hand_over(done)
            done = []
        flat = [t for _, tensors, _ in prepared for t in tensors]
        # Lines of similar width share a model call: less padding to compute.
        order = sorted(range(len(flat)), key=lambda i: _width(flat[i]))
        results: list[Result | None] = [None] * len(flat)
        try:
            for start in range(0, len(order), self.max_batch_size):
                idx = order[start : start + self.max_batch_size]
                t0 = time.monotonic()
                out = list(self._predict([flat[i] for i in idx]))
                if len(out) != len(idx):
                    raise RuntimeError(f"model returned {len(out)} results for {len(idx)} lines")
                for i, r in zip(idx, out, strict=True):
                    results[i] = r
                self._observe(len(idx), waits, time.monotonic() - t0)
                waits = []  # each job's wait is counted once
        except Exception as exc:  # hand the failure to every request of the batch
            log.exception("inference failed for a batch of %d lines", len(flat))
            done += [(job, exc, True) for job, _, _ in prepared]
            _hand_over(done)
            return
        pos = 0
        for job, tensors, extra in prepared:
            mine = results[pos : pos + len(tensors)]
            pos += len(tensors)
            done.append((job, ([r for r in mine if r is not None], extra), False))
        _hand_over(done)
        if not flat and waits:
            self._observe(0, waits, 0.0)

    def _observe(self, size: int, waits: list[float], seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer(size, waits, seconds)
        except Exception:
            log.exception("batch observer failed")

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
