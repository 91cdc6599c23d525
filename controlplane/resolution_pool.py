"""Policy resolutions of the expensive reads, in worker processes.

Resolving 1,000 rules over a large catalog is seconds of pure-Python work. In a thread of the
server it holds the interpreter lock that the event loop needs for every other call (four at once
slowed every RPC about 80x); in a process of its own it costs the server only the pickling of the
spec and the catalog. `controlplane.api.costs.ExpensiveReads` bounds how many run at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from mixprec import policy as lang

log = logging.getLogger(__name__)


class ResolutionPool:
    def __init__(self, processes: int):
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn: a fork of a process that runs gRPC's threads may hang in the child.
                self._pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def resolve(self, spec: lang.PolicySpec, catalog: Sequence[str], base: str) -> lang.Resolution:
        """lang.resolve in a worker process (called from a database thread, which waits without the lock)."""
        try:
            return self._executor().submit(lang.resolve, spec, tuple(catalog), base).result()
        except BrokenProcessPool:  # a worker process died (killed, out of memory): start afresh next time
            log.warning("the resolution processes stopped; this resolution runs in the server, the next in new ones")
            with self._lock:
                self._pool = None
            return lang.resolve(spec, catalog, base)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
