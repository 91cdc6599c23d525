"""grpc.health.v1 follows the database: NOT_SERVING while it does not answer, SERVING once it does.

Load balancers then send operators' calls to a replica that can answer them; agents keep their
streams (and serve their last map) either way.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health_pb2
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


class DatabaseHealth:
    def __init__(self, engine: Engine, health, names: tuple[str, ...], interval: float = 1.0, timeout: float = 2.0):
        self._engine = engine
        self._health = health
        self._names = names
        self._interval = interval
        self._timeout = timeout
        self.serving = True
        # Its own thread: a ping stuck on a stalled connection must not hold one of the request threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixprec-db-health")

    def _ping(self) -> None:
        with self._engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future | None = None
        try:
            while True:
                if pending is None:
                    pending = loop.run_in_executor(self._executor, self._ping)
                done, _ = await asyncio.wait({pending}, timeout=self._timeout)
                answered = bool(done) and pending.exception() is None
                if done:
                    pending = None
                await self._publish(answered)
                await asyncio.sleep(self._interval)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _publish(self, answered: bool) -> None:
        if answered == self.serving:
            return
        self.serving = answered
        if answered:
            log.warning("database answers again: health SERVING")
        else:
            log.warning("database does not answer within %.0fs: health NOT_SERVING", self._timeout)
        status = health_pb2.HealthCheckResponse.SERVING if answered else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._names:
            await self._health.set(name, status)
