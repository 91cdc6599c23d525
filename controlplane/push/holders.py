"""The worker ids this replica's streams hold, and how to end a stream whose identity no longer holds.

The lease in the database decides who holds an id across replicas (services.identity); this is the
replica's own view of it, so that a stream can be ended the moment its lease or its token is gone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc

from controlplane.blocking import run_blocking
from controlplane.services.identity import Claim, WorkerIdentity


@dataclass
class Holder:
    """One live stream holding a worker id."""

    endpoint: str
    worker_id: str
    stream: str                 # the lease's stream id
    token_ids: set[int]         # the tokens it authenticated with (a bootstrap token and the one it issued)
    since: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    code: grpc.StatusCode = grpc.StatusCode.OK
    why: str = ""

    def end(self, code: grpc.StatusCode, why: str) -> None:
        if not self.ended.is_set():
            self.code, self.why = code, why
            self.ended.set()


class StreamHolders:
    def __init__(self) -> None:
        self._holders: dict[tuple[str, str], Holder] = {}  # (endpoint, worker id) -> its stream here
        self.claiming: set[str] = set()  # streams whose lease is being claimed now

    def streams(self) -> set[str]:
        """Every stream of this replica that holds, or is claiming, a lease."""
        return {h.stream for h in self._holders.values()} | self.claiming

    def hold(self, holder: Holder) -> None:
        """The lease is this stream's now: an older stream of this replica with the id ends."""
        self.claiming.discard(holder.stream)
        old = self._holders.get((holder.endpoint, holder.worker_id))
        if old is not None:
            old.end(grpc.StatusCode.ABORTED, "a new stream of the same worker took this worker id over")
        self._holders[(holder.endpoint, holder.worker_id)] = holder

    def release(self, holder: Holder) -> bool:
        """Lets go of the id unless a newer stream took it over; True when this stream held it."""
        key = (holder.endpoint, holder.worker_id)
        if self._holders.get(key) is holder:
            del self._holders[key]
            return True
        return False

    def token_ids(self) -> set[int]:
        return {t for h in self._holders.values() for t in h.token_ids}

    def sweep(self, leased: set[str], ended_tokens: set[int], checked_since: float) -> int:
        """Ends the streams whose token was revoked or expired, and those whose lease is gone (taken over
        by an admin or by the same worker through another replica); returns how many it ended. Streams
        newer than the check (`checked_since`) are left to the next one."""
        count = 0
        for holder in list(self._holders.values()):
            if holder.ended.is_set():
                continue
            if holder.token_ids & ended_tokens:
                holder.end(grpc.StatusCode.UNAUTHENTICATED, "the token this stream authenticated with was "
                                                            "revoked or has expired")
            elif holder.stream not in leased and holder.since < checked_since:
                holder.end(grpc.StatusCode.ABORTED, "this worker id was taken over (by an admin, or by the same "
                                                    "worker on another stream)")
            else:
                continue
            count += 1
        return count


class ClaimQueue:
    """The hellos' claims of worker ids, decided in batches: one goes at once, the ones that arrive
    meanwhile wait for it and go together (a fleet reconnecting at once costs a few transactions)."""

    MAX_BATCH = 500

    def __init__(self, identity: WorkerIdentity):
        self._identity = identity
        self._waiting: list[tuple[Claim, asyncio.Future]] = []
        self._draining = False

    async def claim(self, claim: Claim) -> None:
        """Returns once the stream holds the id; raises its refusal otherwise."""
        decided = asyncio.get_running_loop().create_future()
        self._waiting.append((claim, decided))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        await decided

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.MAX_BATCH], self._waiting[self.MAX_BATCH:]
                try:
                    outcomes = await run_blocking(self._identity.claim_many, [claim for claim, _ in batch])
                except Exception as err:  # noqa: BLE001 - e.g. the database is away: every claim of it fails
                    outcomes = [err] * len(batch)
                for (_, decided), outcome in zip(batch, outcomes, strict=True):
                    if decided.done():  # its stream went away meanwhile
                        continue
                    if outcome is None:
                        decided.set_result(None)
                    else:
                        decided.set_exception(outcome)
        finally:
            self._draining = False
