"""Write-behind of what agent streams learn: ACKs, NACKs, reports, presence.

Thousands of agents ACK within milliseconds of a change; writing each ACK in its own transaction
would put the database on the push path. Updates are merged per worker and written together a few
times a second; a failed write keeps them for the next try.
"""

from __future__ import annotations

import asyncio
import logging

from controlplane import domain
from controlplane.blocking import run_blocking
from controlplane.services.fleet import FleetService
from controlplane.storage.repositories import utcnow
from mixprec.errors import NotFound, Unavailable

log = logging.getLogger(__name__)


class FleetRecorder:
    def __init__(self, fleet: FleetService, interval: float = 0.2, heartbeat: float = 15.0):
        self._fleet = fleet
        self._interval = interval
        self._heartbeat = heartbeat
        self._updates: dict[tuple[str, str], domain.WorkerUpdate] = {}
        self._reports: list[domain.ReportRecord] = []
        self._live: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    def update(self, change: domain.WorkerUpdate) -> None:
        key = (change.endpoint, change.worker_id)
        stamped = change.merged(domain.WorkerUpdate(change.endpoint, change.worker_id, seen_at=utcnow()))
        previous = self._updates.get(key)
        self._updates[key] = previous.merged(stamped) if previous else stamped

    def report(self, record: domain.ReportRecord) -> None:
        self._reports.append(record)

    def live(self, endpoint: str, worker_id: str, connected: bool) -> None:
        (self._live.add if connected else self._live.discard)((endpoint, worker_id))

    async def flush(self) -> None:
        async with self._lock:
            if not self._updates and not self._reports:
                return
            updates, reports = self._updates, self._reports
            self._updates, self._reports = {}, []
            try:
                await run_blocking(self._fleet.record, list(updates.values()), reports)
            except Unavailable as err:
                log.warning("could not record fleet state (%s); keeping %d updates for the next try", err, len(updates))
                self._keep(updates, reports)
            except Exception:  # noqa: BLE001 - one record the database refuses must not cost the batch
                log.warning("a fleet batch was refused; writing its %d updates and %d reports one by one",
                            len(updates), len(reports))
                await self._one_by_one(updates, reports)

    def _keep(self, updates: dict, reports: list) -> None:
        for key, change in updates.items():
            newer = self._updates.get(key)
            self._updates[key] = change.merged(newer) if newer else change
        self._reports[:0] = reports

    async def _one_by_one(self, updates: dict, reports: list) -> None:
        """Each record in its own transaction: only a record that fails alone is dropped (and logged)."""
        kept_updates, kept_reports = {}, []
        for key, change in updates.items():
            if await self._write_alone([change], []) is False:
                kept_updates[key] = change
        for record in reports:
            if await self._write_alone([], [record]) is False:
                kept_reports.append(record)
        self._keep(kept_updates, kept_reports)

    async def _write_alone(self, updates: list, reports: list) -> bool | None:
        """True: written; False: the database is away (keep it); None: refused for good (dropped)."""
        try:
            await run_blocking(self._fleet.record, updates, reports)
            return True
        except Unavailable:
            return False
        except Exception as err:  # noqa: BLE001
            record = (updates or reports)[0]
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
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the recorder must outlive a bad batch
                log.exception("fleet recorder flush failed")
