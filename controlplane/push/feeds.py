"""Telling every control plane replica that an endpoint's target changed.

A replica that changes an endpoint refreshes its own streams at once and publishes the endpoint's
name; the other replicas learn it from Redis pub/sub. Without Redis (one replica, the embedded
default) nothing needs telling. Every replica also re-reads the endpoints its streams watch every
few seconds, so a lost message delays a change but never loses it.

A revoked token or a worker id taken over is announced the same way (`publish_ended`): each replica's
session watch looks at once instead of at its next pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

CHANNEL = "mixprec:endpoint-changed"
PUBLISH_TIMEOUT_S = 2.0  # a stalled Redis must not hold up the write that changed the endpoint
ENDED_CHANNEL = "mixprec:sessions-ended"  # a token was revoked or a worker id taken over somewhere
OnChange = Callable[[str], Awaitable[None]]
OnEnded = Callable[[], None]


class LocalFeed:
    """One replica: nobody else to tell."""

    async def publish(self, endpoint: str) -> None:
        return None

    async def publish_ended(self) -> None:
        return None

    async def run(self, on_change: OnChange, on_ended: OnEnded | None = None) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


class RedisFeed:
    def __init__(self, url: str, replica: str):
        import redis.asyncio as redis

        self._redis = redis.from_url(url, socket_connect_timeout=3, health_check_interval=15)
        self._replica = replica

    async def publish(self, endpoint: str) -> None:
        await self._publish(CHANNEL, f"{self._replica} {endpoint}", f"the change of {endpoint}")

    async def publish_ended(self) -> None:
        await self._publish(ENDED_CHANNEL, self._replica, "ended sessions")

    async def _publish(self, channel: str, data: str, what: str) -> None:
        """Redis is an accelerator: when it fails or stalls, other replicas' own polls still find `what`."""
        try:
            await asyncio.wait_for(self._redis.publish(channel, data), PUBLISH_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("Redis did not take %s within %g s; other replicas will poll", what, PUBLISH_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - see the docstring
            log.warning("could not publish %s to Redis (%s); other replicas will poll", what, err)

    async def run(self, on_change: OnChange, on_ended: OnEnded | None = None) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL, ENDED_CHANNEL)
                    async for message in pubsub.listen():
                        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                        sender, _, endpoint = message["data"].decode().partition(" ")
                        if channel == ENDED_CHANNEL:
                            if sender != self._replica and on_ended is not None:
                                on_ended()
                        elif sender != self._replica and endpoint:
                            await on_change(endpoint)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - reconnect after any Redis failure
                log.warning("Redis change feed interrupted (%s); resubscribing in 1s", err)
                await asyncio.sleep(1)

    async def close(self) -> None:
        await self._redis.aclose()
