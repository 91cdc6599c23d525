"""Write requests by idempotency key: what a retried call with a known key answers."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from controlplane.storage.write_requests import KEEP_FOR, RequestKey, WriteRequest


class RequestLog:
    def __init__(self, uow: Callable[[], UnitOfWork]):
        self._uow = uow

    def find(self, key: RequestKey) -> WriteRequest | None:
        with self._uow() as uow:
            return uow.requests.get(key)

    def keep_response(self, key: RequestKey, response: bytes) -> None:
        with self._uow() as uow:
            uow.requests.keep_response(key, response)
            uow.commit()

    def forget_old(self) -> None:
        with self._uow() as uow:
            uow.requests.forget_before(utcnow() - KEEP_FOR)
            uow.commit()
