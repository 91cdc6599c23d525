"""Live regions: a page's parts re-rendered on the server and sent as server-sent events when they change.

Each open page holds one event stream. The stream re-reads its page's state every `interval` seconds,
and at once (then every 0.1 s for 2 s) after an action went through this dashboard, and sends only the
regions whose HTML differs from what the page already shows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from mixprec.errors import MixprecError, ResourceExhausted, Unavailable

QUICK_SECONDS, QUICK_INTERVAL = 2.0, 0.1  # after an action: look every 0.1 s for 2 s
MAX_STREAMS = 200  # each open page re-reads its state twice a second: bound what browsers can ask for


class Live:
    def __init__(self, interval: float = 0.5, max_streams: int = MAX_STREAMS):
        self.interval = interval
        self.max_streams = max_streams
        self.open_streams = 0
        self._quick_until = 0.0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()

    def poke(self) -> None:
        """Something changed: every stream looks again now, and often for a moment, since the workers'
        answers to a change arrive over the next few hundred milliseconds."""
        self._quick_until = time.monotonic() + QUICK_SECONDS
        self._wake.set()
        self._wake = asyncio.Event()

    def close(self) -> None:
        self._closing.set()
        self.poke()

    async def _tick(self) -> None:
        interval = min(self.interval, QUICK_INTERVAL) if time.monotonic() < self._quick_until else self.interval
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait_for(asyncio.shield(wake), interval)
        except asyncio.TimeoutError:
            pass
        finally:
            wake.cancel()

    def regions(self, render: Callable[[], Awaitable[dict[str, str]]]) -> AsyncIterator[dict]:
        """SSE events (`region`: {id, html}) for every region whose HTML changed; ends when the dashboard
        stops or `render` fails for a reason the caller caused (the session ended, the endpoint is gone)."""
        if self.open_streams >= self.max_streams:
            raise ResourceExhausted(f"{self.open_streams} live pages are open on this replica, the limit; "
                                    "close some or reload later")
        return self._regions(render)

    async def _regions(self, render: Callable[[], Awaitable[dict[str, str]]]) -> AsyncIterator[dict]:
        self.open_streams += 1
        try:
            async for event in self._changes(render):
                yield event
        finally:
            self.open_streams -= 1

    async def _changes(self, render: Callable[[], Awaitable[dict[str, str]]]) -> AsyncIterator[dict]:
        shown: dict[str, str] = {}
        while not self._closing.is_set():
            try:
                regions = await render()
            except Unavailable as err:  # the database is away: say so, keep the page, try again
                yield {"event": "trouble", "data": str(err)}
                await self._tick()
                continue
            except MixprecError as err:
                yield {"event": "gone", "data": str(err)}
                return
            for region, html in regions.items():
                if shown.get(region) != html:
                    yield {"event": "region", "data": json.dumps({"id": region, "html": html})}
            shown = regions
            await self._tick()
