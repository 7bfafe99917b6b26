"""Evening out keep-alive connections across the gunicorn workers of one API host.

All workers accept on one listening socket, and the kernel hands a burst of new connections to
whichever worker calls accept() first: 32 connections opened at once often split 24 / 8.
Keep-alive clients (the load balancer's upstream pool, the web app) then stay where they landed:
one worker is overloaded while the other runs half-empty batches, which cost the model more CPU
per line. So each worker publishes how many clients it served in the last moment in a small table
that all workers share (anonymous shared memory the gunicorn master makes before it forks), and a
worker holding more than TOLERANCE clients above the least loaded worker answers one request with
``Connection: close``. The client reconnects, and the worker that is idle first -- usually the
less loaded one -- accepts it. Without gunicorn (tests, ``uvicorn`` directly) nothing changes.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Hashable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SLOTS = 64
# worker pid (0 = free), clients seen within WINDOW_S, when that was counted (time.monotonic(),
# the same clock in every process)
_SLOT = struct.Struct("qqd")
_COUNT = struct.Struct("qd")
WINDOW_S = 2.0  # longer than a request takes on a very busy host
SHED_INTERVAL_S = 0.01  # at most one connection closed per interval and worker
PRUNE_INTERVAL_S = 0.1
# Hand a client over only when this worker has more than this many clients above the least
# loaded one: a client handed over may land here again, so small differences are left alone.
TOLERANCE = 2


class WorkerTable:
    """Per-worker client counts in shared memory; made in the master, inherited by fork."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._mm = mmap.mmap(-1, slots * _SLOT.size)

    def free_slot(self, used: set[int]) -> int:
        """The lowest slot number not in ``used`` (the slots of live workers)."""
        for i in range(self.slots):
            if i not in used:
                return i
        raise RuntimeError(f"more than {self.slots} API workers")

    def attach(self, slot: int, pid: int) -> None:
        _SLOT.pack_into(self._mm, slot * _SLOT.size, pid, 0, 0.0)

    def release(self, slot: int) -> None:
        _SLOT.pack_into(self._mm, slot * _SLOT.size, 0, 0, 0.0)

    def publish(self, slot: int, clients: int, now: float) -> None:
        _COUNT.pack_into(self._mm, slot * _SLOT.size + 8, clients, now)  # the pid stays

    def clients(self, slot: int, now: float) -> int:
        """The clients a worker served within WINDOW_S before ``now``."""
        _, n, when = _SLOT.unpack_from(self._mm, slot * _SLOT.size)
        return _recent(n, when, now)

    def least_other(self, slot: int, now: float) -> int | None:
        """The fewest clients of any other live worker, None if this is the only one."""
        least = None
        # One pass over the whole table (read on every request: keep it cheap).
        for i, (pid, n, when) in enumerate(_SLOT.iter_unpack(self._mm)):
            if i == slot or not pid:
                continue
            count = _recent(n, when, now)
            if least is None or count < least:
                least = count
        return least


def _recent(clients: int, when: float, now: float) -> int:
    """A published client count, or 0 if it is older than WINDOW_S (no request since)."""
    return int(clients) if now - when < WINDOW_S else 0


# Set by gunicorn_conf: the table in the master (before forking), the slot in each worker.
TABLE: WorkerTable | None = None
SLOT: int | None = None


class Balancer:
    """One worker's view: its recent clients, and whether to close a connection to shed one."""

    def __init__(self, table: WorkerTable, slot: int) -> None:
        self.table = table
        self.slot = slot
        self._clients: dict[Hashable, float] = {}
        self._pruned = 0.0
        self._shed = 0.0

    def should_close(self, client: Hashable, now: float | None = None) -> bool:
        """Note a request of ``client``; True if its connection should close after it."""
        now = time.monotonic() if now is None else now
        new = client not in self._clients
        self._clients[client] = now
        if now - self._pruned > PRUNE_INTERVAL_S:
            self._pruned = now
            old = now - WINDOW_S
            self._clients = {c: t for c, t in self._clients.items() if t > old}
            new = True
        if new:
            self.table.publish(self.slot, len(self._clients), now)
        if now - self._shed < SHED_INTERVAL_S:
            return False
        least = self.table.least_other(self.slot, now)
        if least is None or len(self._clients) <= least + TOLERANCE:
            return False
        self._shed = now
        del self._clients[client]
        self.table.publish(self.slot, len(self._clients), now)
        return True


class BalanceMiddleware:
    """Adds ``Connection: close`` to responses of clients this worker should hand over."""

    def __init__(self, app: ASGIApp, balancer: Balancer) -> None:
        self.app = app
        self.balancer = balancer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] != "http" or not peer:
            await self.app(scope, receive, send)
            return
        if not self.balancer.should_close(tuple(peer)):
            await self.app(scope, receive, send)
            return

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing_send)


def this_worker() -> Balancer | None:
    """The balancer of this worker, or None outside gunicorn (or with a single worker)."""
    if TABLE is None or SLOT is None:
        return None
    return Balancer(TABLE, SLOT)
