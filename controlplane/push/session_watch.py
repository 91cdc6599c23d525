"""Ends what a revoked or expired token, or a lost worker-id lease, no longer allows, on this replica.

Every `interval` seconds (and at once when woken: a revocation or takeover here, or one another
replica announced over Redis) it reads which worker-id leases this replica's streams still hold and
asks the database which of the tokens in use here (streams, dashboard sessions, the authenticator's
memory) have ended; every third of a lease's life it also extends this replica's leases. Then
it closes those streams (UNAUTHENTICATED), the streams whose lease is gone (ABORTED), forgets the
tokens and ends their dashboard sessions. Without Redis a revocation bites within one interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from controlplane.auth import Authenticator
from controlplane.blocking import run_blocking
from controlplane.push.holders import StreamHolders
from controlplane.services.identity import WorkerIdentity
from mixprec.errors import MixprecError

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0


class SessionWatch:
    def __init__(self, identity: WorkerIdentity, holders: StreamHolders, authenticator: Authenticator, replica: str,
                 interval: float = WATCH_INTERVAL_S):
        self._identity = identity
        self._holders = holders
        self._authenticator = authenticator
        self._replica = replica
        self._interval = interval
        self._extended = -float("inf")  # when this replica's leases were last extended (monotonic)
        self._orphans: set[str] = set()
        self._wake = asyncio.Event()
        # Other holders of tokens (the dashboard's sessions): () -> their token ids, and ending them.
        self.session_tokens: Callable[[], set[int]] = set
        self.end_sessions: Callable[[set[int]], object] = lambda ids: None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except MixprecError as err:  # the database is away: leases expire, streams go on meanwhile
                log.warning("session watch: %s", err)
            except Exception:  # noqa: BLE001 - the watch must outlive one bad pass
                log.exception("session watch pass failed")

    async def check(self) -> None:
        started = time.monotonic()
        tokens = self._holders.token_ids() | self._authenticator.token_ids() | self.session_tokens()
        extend = started - self._extended >= self._identity.lease_seconds / 3
        leased, ended = await run_blocking(self._identity.heartbeat, self._replica, sorted(tokens), extend,
                                           self._orphans)
        if extend:
            self._extended = started
        # A lease whose stream is neither here nor claiming (it left mid-claim) is released next pass.
        self._orphans = leased - self._holders.streams()
        closed = self._holders.sweep(leased, ended, started)
        if ended:
            self._authenticator.forget_ids(ended)
            self.end_sessions(ended)
        if closed:
            log.info("ended %d stream(s) whose token or worker-id lease is gone", closed)
