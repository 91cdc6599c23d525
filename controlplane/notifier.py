"""Sends the webhook outbox: its own task, so a slow or dead receiver never holds up the control loop.

Each delivery is retried with jittered exponential backoff (tenacity) on connection errors, timeouts,
429 and 5xx; other 4xx answers are final. The outcome lands in the delivery row and the audit log.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from controlplane.blocking import run_blocking
from controlplane.services.notifications import NotificationService, masked
from mixprec import __version__
from mixprec.errors import MixprecError

log = logging.getLogger(__name__)

# A delivery claimed by a replica that vanished is sent again after this long (at least once).
STALE_AFTER = timedelta(minutes=10)


class _Refused(Exception):
    """The webhook's host is an address webhooks may not reach: final, never retried."""


def _retryable(err: BaseException) -> bool:
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code == 429 or err.response.status_code >= 500
    return isinstance(err, httpx.TransportError)


class Notifier:
    def __init__(self, service: NotificationService, replica: str, interval: float = 1.0, attempts: int = 5,
                 backoff: tuple[float, float] = (0.5, 30.0), timeout: float = 10.0, concurrency: int = 8):
        self._service = service
        self._replica = replica
        self._interval = interval
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: set[asyncio.Task] = set()

    async def run(self) -> None:
        headers = {"User-Agent": f"mixprec/{__version__}"}
        async with httpx.AsyncClient(timeout=self._timeout, headers=headers, follow_redirects=False) as client:
            try:
                while True:
                    await self._pass(client)
                    await asyncio.sleep(self._interval)
            finally:
                for task in self._inflight:
                    task.cancel()
                await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _pass(self, client: httpx.AsyncClient) -> None:
        try:
            await run_blocking(self._service.queue)
            claimed = await run_blocking(self._service.claim, self._replica, STALE_AFTER)
        except MixprecError as err:
            log.warning("notifications: %s", err)
            return
        except Exception:  # noqa: BLE001 - the notifier must outlive one bad pass
            log.exception("notification pass failed")
            return
        for delivery in claimed:
            task = asyncio.ensure_future(self._deliver(client, delivery))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _deliver(self, client: httpx.AsyncClient, delivery) -> None:
        attempts, status, error, delivered = 0, 0, "", False
        async with self._slots:
            refusal = await run_blocking(self._service.targets.delivery_refusal, delivery.url)
            try:
                if refusal is not None:  # e.g. the name resolves to a private address now
                    raise _Refused(refusal)
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(self._attempts), retry=retry_if_exception(_retryable), reraise=True,
                    wait=wait_random_exponential(multiplier=self._backoff[0], max=self._backoff[1]),  # full jitter
                ):
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        response = await client.post(delivery.url, json=delivery.payload)
                        status = response.status_code
                        response.raise_for_status()
                delivered = True
            except _Refused as err:
                error = f"not sent to {masked(delivery.url)}: {err}"
            except httpx.HTTPStatusError:
                error = f"HTTP {status} from {masked(delivery.url)}"
            except httpx.HTTPError as err:  # the message may hold the URL, whose path is a secret
                error = f"{type(err).__name__} reaching {masked(delivery.url)}: {err}".replace(delivery.url, "…")
        log.log(logging.INFO if delivered else logging.WARNING, "webhook %s of %s, %s: %s after %d attempt(s)",
                delivery.webhook, delivery.endpoint, delivery.event, "delivered" if delivered else error, attempts)
        try:
            await run_blocking(self._service.settle, delivery, delivered, attempts, status, error)
        except MixprecError as err:
            log.warning("could not record delivery %d (%s); it is sent again later", delivery.id, err)
