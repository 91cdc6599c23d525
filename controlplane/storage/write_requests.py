"""Write RPCs with a definite outcome: each runs under its caller's deadline and is applied once per key.

The servicer opens a `WriteScope` for the call (a context variable, carried into the database
thread); every transaction begun inside it gets statement, lock and busy timeouts from the time
left, and its commit records the request id. A commit that would land after the deadline does not
happen: checked here before COMMIT, and on Postgres once more by a trigger at COMMIT itself.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from controlplane.storage.repositories import utcnow
from controlplane.storage.tables import WriteRequestRow
from mixprec.errors import Unavailable

KEEP_FOR = timedelta(days=1)  # how long a request id answers retries
# The answer must still reach the caller: a commit this close to the deadline is not started.
COMMIT_MARGIN_S = 0.2


@dataclass(frozen=True)
class RequestKey:
    """What a request id belongs to: the caller's credential, the method and the endpoint; with the
    fingerprint of the call's parameters, which a retry must repeat."""

    request_id: str
    method: str
    caller: str = ""
    endpoint: str = ""
    fingerprint: str = ""


@dataclass
class WriteScope:
    key: RequestKey
    deadline: float | None  # time.monotonic() seconds; None: the caller set no deadline
    deadline_at: datetime | None = None
    recorded: bool = False

    @classmethod
    def open(cls, key: RequestKey, time_remaining: float | None) -> WriteScope:
        if time_remaining is None:
            return cls(key, None)
        left = max(0.0, time_remaining - COMMIT_MARGIN_S)
        return cls(key, time.monotonic() + left, utcnow() + timedelta(seconds=left))

    @property
    def request_id(self) -> str:
        return self.key.request_id

    @property
    def method(self) -> str:
        return self.key.method

    def remaining_ms(self) -> int | None:
        if self.deadline is None:
            return None
        return max(1, int((self.deadline - time.monotonic()) * 1000))

    def check(self, what: str) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Unavailable(f"{self.method}: the call's deadline passed before {what}; nothing was written")


current_scope: contextvars.ContextVar[WriteScope | None] = contextvars.ContextVar("mixprec_write_scope",
                                                                                  default=None)


@dataclass(frozen=True)
class WriteRequest:
    request_id: str
    method: str
    response: bytes | None
    fingerprint: str = ""


class WriteRequestRepository:
    def __init__(self, session: Session):
        self._session = session

    def get(self, key: RequestKey) -> WriteRequest | None:
        row = self._session.scalars(select(WriteRequestRow).where(*_matches(key))).first()
        return WriteRequest(row.request_id, row.method, row.response, row.fingerprint) if row else None

    def record(self, scope: WriteScope) -> None:
        key = scope.key
        self._session.add(WriteRequestRow(request_id=key.request_id, method=key.method, caller=key.caller,
                                          endpoint=key.endpoint, fingerprint=key.fingerprint, response=None,
                                          deadline=scope.deadline_at, created_at=utcnow()))

    def keep_response(self, key: RequestKey, response: bytes) -> None:
        self._session.execute(update(WriteRequestRow).where(*_matches(key)).values(response=response))

    def forget_before(self, before: datetime) -> None:
        self._session.execute(delete(WriteRequestRow).where(WriteRequestRow.created_at < before))



def _matches(key: RequestKey):
    return (WriteRequestRow.caller == key.caller, WriteRequestRow.method == key.method,
            WriteRequestRow.endpoint == key.endpoint, WriteRequestRow.request_id == key.request_id)
