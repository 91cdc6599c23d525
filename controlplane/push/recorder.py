"""Write-behind of what agent streams learn: ACKs, NACKs, reports, presence.

Thousands of agents ACK within milliseconds of a change; writing each ACK in its own transaction
would put the database on the push path. Updates are merged per worker and written together a few
times a second; a failed write keeps them for the next try. A report's `on_stored` runs once it is
in the database (the stream then acknowledges it to its worker, which stops resending it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Callable

from controlplane import domain
from controlplane.blocking import run_blocking
from controlplane.services.fleet import FleetService
from controlplane.storage.repositories import utcnow
from mixprec.errors import MixprecError

log = logging.getLogger(__name__)


class FleetRecorder:
    def __init__(self, fleet: FleetService, interval: float = 0.2, heartbeat: float = 15.0):
        self._fleet = fleet
        self._interval = interval
        self._heartbeat = heartbeat
        self._updates: dict[tuple[str, str], domain.WorkerUpdate] = {}
        self._reports: list[tuple[domain.ReportRecord, Callable[[], None] | None]] = []
        self._connects: dict[tuple[str, str], domain.WorkerConnect] = {}
        self._live: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    def update(self, change: domain.WorkerUpdate) -> None:
        key = (change.endpoint, change.worker_id)
        stamped = change.merged(domain.WorkerUpdate(change.endpoint, change.worker_id, seen_at=utcnow()))
        previous = self._updates.get(key)
        self._updates[key] = previous.merged(stamped) if previous else stamped

    def connected(self, hello: domain.WorkerConnect) -> None:
        key = (hello.endpoint, hello.worker_id)
        self._connects[key] = hello
        pending = self._updates.get(key)
        if pending is not None and pending.connected is not None:  # an older goodbye must not undo this hello
            self._updates[key] = replace(pending, connected=None)

    def report(self, record: domain.ReportRecord, on_stored: Callable[[], None] | None = None) -> None:
        self._reports.append((record, on_stored))

    def live(self, endpoint: str, worker_id: str, connected: bool) -> None:
        (self._live.add if connected else self._live.discard)((endpoint, worker_id))

    async def flush(self) -> bool:
        """Writes what is buffered; False when the database refused it (it stays buffered)."""
        async with self._lock:
            if not self._updates and not self._reports and not self._connects:
                return True
            updates, reports, connects = self._updates, self._reports, self._connects
            self._updates, self._reports, self._connects = {}, [], {}
            try:
                await run_blocking(self._fleet.record, list(updates.values()), [record for record, _ in reports],
                                   list(connects.values()))
            except MixprecError as err:
                log.warning("could not record fleet state (%s); keeping %d updates for the next try", err, len(updates))
                for key, change in updates.items():
                    newer = self._updates.get(key)
                    self._updates[key] = change.merged(newer) if newer else change
                self._reports[:0] = reports
                self._connects = connects | self._connects
                return False
        for _, on_stored in reports:
            if on_stored is not None:
                on_stored()
        return True

    async def flush_before_exit(self, attempts: int = 5, pause: float = 0.5) -> None:
        """At shutdown: a few tries, then say what is lost (agents resend unacknowledged reports)."""
        for _ in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(pause)
        log.error("stopping with %d worker updates and %d reports unrecorded; agents resend their reports",
                  len(self._updates), len(self._reports))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self._heartbeat
        while True:
            await asyncio.sleep(self._interval)
            if loop.time() >= next_heartbeat:
                for endpoint, worker_id in self._live:
                    self.update(domain.WorkerUpdate(endpoint, worker_id, connected=True))
                next_heartbeat = loop.time() + self._heartbeat
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the recorder must outlive a bad batch
                log.exception("fleet recorder flush failed")
