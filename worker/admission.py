"""Bounded work on a worker: a few requests run, a few wait, the rest are refused at once.

`Admission` runs on the server's event loop; `ServingLoad` counts what is admitted across all of a
worker's admissions, so the shadow evaluation (on its own thread) can step aside while requests run.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from mixprec.errors import ResourceExhausted


class ServingLoad:
    """How many admitted requests are running or waiting now (thread-safe; read by the evaluation)."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()

    @property
    def busy(self) -> int:
        return self._busy

    def add(self, delta: int) -> None:
        with self._changed:
            self._busy += delta
            self._changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Blocks until nothing is admitted, or `timeout` seconds; True when idle."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout)


class Admission:
    """At most `max_inflight` running and `max_queue` waiting (first come, first served); beyond that
    `acquire` raises ResourceExhausted at once. A waiter that is cancelled leaves the queue."""

    def __init__(self, max_inflight: int, max_queue: int, what: str, load: ServingLoad | None = None,
                 flags: str = "--max-inflight/--max-queue"):
        self.max_inflight, self.max_queue, self.what, self.flags = max_inflight, max_queue, what, flags
        self.load = load or ServingLoad()
        self.inflight = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def acquire(self) -> None:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            self.load.add(1)
            return
        if self.waiting >= self.max_queue:
            raise ResourceExhausted(f"worker busy: {self.inflight} {self.what} running and {self.waiting} waiting, "
                                    f"the most it takes (mixprec worker {self.flags}); retry later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.load.add(1)
        try:
            await waiter  # release() hands its slot over: inflight stays as it is
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self.load.add(-1)
            else:  # the slot was handed over just as the caller went away: pass it on
                self.release()
            raise

    def release(self) -> None:
        self.load.add(-1)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1
