"""Write-behind of what agent streams learn: ACKs, NACKs, reports, presence.

Thousands of agents ACK within milliseconds of a change; writing each ACK in its own transaction
would put the database on the push path. Updates are merged per worker and written together a few
times a second, at a quiet moment (a push's burst of ACKs is not competed with for the interpreter,
but nothing waits longer than `max_delay`); a failed write keeps them for the next try. A report's `on_stored` runs once it is
in the database (the stream then acknowledges it to its worker, which stops resending it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Callable

from controlplane import domain
from controlplane.blocking import run_blocking
from controlplane.services.fleet import FleetService
from controlplane.storage.repositories import utcnow
from mixprec.errors import NotFound, Unavailable

log = logging.getLogger(__name__)


class FleetRecorder:
    def __init__(self, fleet: FleetService, interval: float = 0.2, heartbeat: float = 15.0, quiet: float = 0.05,
                 max_delay: float = 1.0):
        self._fleet = fleet
        self._interval = interval
        self._quiet = quiet
        self._max_delay = max_delay
        self._first_change: float | None = None  # monotonic time of the oldest unwritten change
        self._last_change = 0.0
        self._heartbeat = heartbeat
        self._updates: dict[tuple[str, str], domain.WorkerUpdate] = {}
        self._reports: list[tuple[domain.ReportRecord, Callable[[], None] | None]] = []
        self._connects: dict[tuple[str, str], domain.WorkerConnect] = {}
        self._live: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    def _changed(self) -> None:
        self._last_change = time.monotonic()
        if self._first_change is None:
            self._first_change = self._last_change

    def _busy(self) -> bool:
        """A burst is still arriving and nothing has waited too long: write a little later."""
        now = time.monotonic()
        return (self._first_change is not None and now - self._last_change < self._quiet
                and now - self._first_change < self._max_delay)

    def update(self, change: domain.WorkerUpdate) -> None:
        self._changed()
        key = (change.endpoint, change.worker_id)
        stamped = change.merged(domain.WorkerUpdate(change.endpoint, change.worker_id, seen_at=utcnow()))
        previous = self._updates.get(key)
        self._updates[key] = previous.merged(stamped) if previous else stamped

    def connected(self, hello: domain.WorkerConnect) -> None:
        self._changed()
        key = (hello.endpoint, hello.worker_id)
        self._connects[key] = hello
        pending = self._updates.get(key)
        if pending is not None and pending.connected is not None:  # an older goodbye must not undo this hello
            self._updates[key] = replace(pending, connected=None)

    def report(self, record: domain.ReportRecord, on_stored: Callable[[], None] | None = None) -> None:
        self._changed()
        self._reports.append((record, on_stored))

    def live(self, endpoint: str, worker_id: str, connected: bool) -> None:
        (self._live.add if connected else self._live.discard)((endpoint, worker_id))

    async def flush(self) -> bool:
        """Writes what is buffered; False when the database is away (it stays buffered)."""
        async with self._lock:
            if not self._updates and not self._reports and not self._connects:
                return True
            updates, reports, connects = self._updates, self._reports, self._connects
            self._updates, self._reports, self._connects = {}, [], {}
            self._first_change = None
            try:
                await run_blocking(self._fleet.record, list(updates.values()), [record for record, _ in reports],
                                   list(connects.values()))
            except Unavailable as err:
                log.warning("could not record fleet state (%s); keeping %d updates for the next try", err, len(updates))
                self._keep(updates, reports, connects)
                self._changed()
                return False
            except Exception:  # noqa: BLE001 - one record the database refuses must not cost the batch
                log.warning("a fleet batch was refused; writing its %d updates and %d reports one by one",
                            len(updates), len(reports))
                return await self._one_by_one(updates, reports, connects)
        _stored(reports)
        return True

    async def flush_before_exit(self, attempts: int = 5, pause: float = 0.5) -> None:
        """At shutdown: a few tries, then say what is lost (agents resend unacknowledged reports)."""
        for _ in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(pause)
        log.error("stopping with %d worker updates and %d reports unrecorded; agents resend their reports",
                  len(self._updates), len(self._reports))

    def _keep(self, updates: dict, reports: list, connects: dict) -> None:
        for key, change in updates.items():
            newer = self._updates.get(key)
            self._updates[key] = change.merged(newer) if newer else change
        self._reports[:0] = reports
        self._connects = connects | self._connects

    async def _one_by_one(self, updates: dict, reports: list, connects: dict) -> bool:
        """Each record in its own transaction: only a record that fails alone is dropped (and logged)."""
        kept_updates, kept_reports, kept_connects = {}, [], {}
        for key, hello in connects.items():
            if await self._write_alone(hello, connects=[hello]) is False:
                kept_connects[key] = hello
        for key, change in updates.items():
            if await self._write_alone(change, updates=[change]) is False:
                kept_updates[key] = change
        for record, on_stored in reports:
            written = await self._write_alone(record, reports=[record])
            if written is False:
                kept_reports.append((record, on_stored))
            elif written:
                _stored([(record, on_stored)])
        self._keep(kept_updates, kept_reports, kept_connects)
        return not (kept_updates or kept_reports or kept_connects)

    async def _write_alone(self, record, updates=(), reports=(), connects=()) -> bool | None:
        """True: written; False: the database is away (keep it); None: refused for good (dropped)."""
        try:
            await run_blocking(self._fleet.record, list(updates), list(reports), list(connects))
            return True
        except Unavailable:
            return False
        except Exception as err:  # noqa: BLE001
            if isinstance(err, NotFound):  # its endpoint was deleted: stop the heartbeats that would retry it
                self._live.discard((record.endpoint, record.worker_id))
            log.error("dropped a fleet record of worker %s of %s that the database refuses (%s: %s)",
                      record.worker_id, record.endpoint, type(err).__name__, str(err).splitlines()[0][:200])
            return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self._heartbeat
        while True:
            await asyncio.sleep(self._interval)
            if loop.time() >= next_heartbeat:
                for endpoint, worker_id in self._live:
                    self.update(domain.WorkerUpdate(endpoint, worker_id, connected=True))
                next_heartbeat = loop.time() + self._heartbeat
            if self._busy():
                continue
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the recorder must outlive a bad batch
                log.exception("fleet recorder flush failed")


def _stored(reports: list) -> None:
    for _, on_stored in reports:
        if on_stored is not None:
            on_stored()
