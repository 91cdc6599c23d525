"""The latest target of each endpoint and the streams waiting for it to change.

It holds validated snapshots and wakes watchers; it knows nothing of policies, versions' meaning
or storage (go-control-plane's cache/server split).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from controlplane.services.fleet import Target


class TargetHub:
    def __init__(self) -> None:
        self._targets: dict[str, Target] = {}
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)

    def get(self, endpoint: str) -> Target | None:
        return self._targets.get(endpoint)

    def publish(self, target: Target) -> None:
        if self._targets.get(target.endpoint) == target:
            return
        self._targets[target.endpoint] = target
        for event in self._watchers.get(target.endpoint, ()):
            event.set()

    def forget(self, endpoint: str) -> None:
        """The endpoint is gone: no target to hand out (a new hello then goes to the database and is
        refused), and its streams wake to find none and close."""
        if self._targets.pop(endpoint, None) is not None:
            for event in self._watchers.get(endpoint, ()):
                event.set()

    @contextmanager
    def watch(self, endpoint: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._watchers[endpoint].add(event)
        try:
            yield event
        finally:
            self._watchers[endpoint].discard(event)
            if not self._watchers[endpoint]:
                del self._watchers[endpoint]

    def watched(self) -> list[str]:
        return list(self._watchers)

    def connected(self, endpoint: str) -> int:
        """Streams of this replica that watch `endpoint` (its connected workers)."""
        return len(self._watchers.get(endpoint, ()))
