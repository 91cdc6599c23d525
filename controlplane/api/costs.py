"""Per-token bounds on what legal calls may cost the others: report rate, distinct worker ids, and
concurrent expensive reads. Field limits (controlplane.api.limits) bound one request; these bound
what many legal requests of one token add up to on one replica.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from controlplane.blocking import run_blocking
from mixprec.errors import ResourceExhausted

T = TypeVar("T")

MAX_TRACKED_KEYS = 10_000  # buckets and id sets kept at once; the least recently used go first


class TokenBucket:
    """`rate` events a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self._level = burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now
        if self._level < 1:
            return False
        self._level -= 1
        return True


class RateLimits:
    """One TokenBucket per key (a token's name), made on first use."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        return bucket.take()


class WorkerIdQuota:
    """How many distinct worker ids one token may say hello with for one endpoint on this replica:
    the ids of its live streams and of those that ended within `window_s` (each id becomes a row
    and metric series; a worker reconnecting under its id costs nothing)."""

    def __init__(self, max_ids: int, window_s: float = 3600.0):
        self.max_ids, self.window_s = max_ids, window_s
        self._seen: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()  # -> id -> ended (inf: live)

    def admit(self, token: str, endpoint: str, worker_id: str) -> None:
        now = time.monotonic()
        key = (token, endpoint)
        seen = self._seen.setdefault(key, {})
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_TRACKED_KEYS:
            self._seen.popitem(last=False)
        if worker_id not in seen:
            for old in [w for w, ended in seen.items() if now - ended > self.window_s]:
                del seen[old]
            if len(seen) >= self.max_ids:
                raise ResourceExhausted(
                    f"token {token!r} holds {len(seen)} distinct worker ids of endpoint {endpoint!r} here (live or "
                    f"ended within {self.window_s / 60:g} minutes); the limit is {self.max_ids} (reuse worker ids, "
                    "or raise --max-worker-ids-per-token)")
        seen[worker_id] = math.inf

    def release(self, token: str, endpoint: str, worker_id: str) -> None:
        seen = self._seen.get((token, endpoint))
        if seen is not None and worker_id in seen:
            seen[worker_id] = time.monotonic()


class ExpensiveReads:
    """Reads whose cost grows with rules x catalog (a resolution of up to 2,000,000 pattern checks):
    at most `per_token` at once per token (more are refused) and `total` at once in all (more wait,
    within their deadline), so that a few of them cannot slow every other call."""

    def __init__(self, per_token: int = 2, total: int = 4):
        self.per_token, self.total = per_token, total
        self._running: dict[str, int] = {}
        self._slots = asyncio.Semaphore(total)

    async def run(self, token: str, time_remaining: float | None, fn: Callable[..., T], *args) -> T:
        """Runs `fn(*args)` in the database pool once a slot is free. The slot is held until `fn` ends,
        even when its caller goes away first (a cancelled call must not free a busy thread's slot)."""
        if self._running.get(token, 0) >= self.per_token:
            raise ResourceExhausted(f"token {token!r} has {self.per_token} policy resolutions running; the limit is "
                                    f"{self.per_token} at once (wait for them, or resolve smaller policies)")
        self._running[token] = self._running.get(token, 0) + 1
        try:
            patience = None if time_remaining is None else max(0.0, time_remaining - 0.5)
            await asyncio.wait_for(self._slots.acquire(), patience)
        except asyncio.TimeoutError:
            self._leave(token)
            raise ResourceExhausted(f"the server runs {self.total} policy resolutions at once and none ended "
                                    "within this call's deadline; retry later") from None
        except BaseException:
            self._leave(token)
            raise
        job = asyncio.ensure_future(run_blocking(fn, *args))
        job.add_done_callback(lambda _: self._finished(token, job))
        return await asyncio.shield(job)

    def _finished(self, token: str, job: asyncio.Future) -> None:
        self._slots.release()
        self._leave(token)
        if not job.cancelled():
            job.exception()  # retrieved: a caller that went away leaves no "never retrieved" warning

    def _leave(self, token: str) -> None:
        self._running[token] -= 1
        if not self._running[token]:
            del self._running[token]
