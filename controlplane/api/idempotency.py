"""Write calls: run under the caller's deadline, applied once per `request_id`, answered alike when retried."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable
from typing import Callable, TypeVar

from google.protobuf.message import Message

from controlplane.blocking import run_blocking
from controlplane.services.write_requests import RequestLog
from controlplane.storage.write_requests import WriteRequest, WriteScope, current_scope
from mixprec.errors import AlreadyExists, FieldError, InvalidArgument, MixprecError

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 100
Answer = TypeVar("Answer")


def check_request_id(given: str) -> None:
    if len(given) > MAX_REQUEST_ID or not given.isprintable():
        raise InvalidArgument(FieldError("request_id", f"{given[:40]!r}... must be at most "
                                         f"{MAX_REQUEST_ID} printable characters"))


async def applied_once(requests: RequestLog | None, request_id: str, method: str, time_remaining: float | None,
                       write: Callable[[], Awaitable[Answer]], encode: Callable[[Answer], bytes],
                       decode: Callable[[bytes], Answer]) -> Answer:
    """Runs `write` once per request id (its transactions record the id and honour the deadline);
    a retry with a known id gets the first call's answer, as `encode` kept it."""
    check_request_id(request_id)
    if request_id and requests is not None:
        earlier = await run_blocking(requests.find, request_id)
        if earlier is not None:
            return _replayed(earlier, method, decode)
    # Without a key the call still gets a deadline-guarded transaction under a one-off id.
    scope = WriteScope.open(request_id or f"{method}-{uuid.uuid4().hex}", method, time_remaining)
    token = current_scope.set(scope)
    try:
        answer = await write()
    finally:
        current_scope.reset(token)
    if request_id and requests is not None and scope.recorded:
        try:
            await run_blocking(requests.keep_response, request_id, encode(answer))
        except MixprecError as err:  # the write stands; only a retry's answer is lost
            log.warning("could not keep the answer to request %s: %s", request_id, err)
    return answer


def write_rpc(response_type, kept: Callable[[Message], Message] | None = None):
    """Decorates a servicer method that writes; the servicer may have `_requests` (a RequestLog).
    `kept` turns the answer into what may be stored for retries (e.g. without a secret)."""

    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            return await applied_once(
                getattr(self, "_requests", None), request.request_id, method.__name__, context.time_remaining(),
                lambda: method(self, request, context),
                lambda response: (kept(response) if kept is not None else response).SerializeToString(),
                response_type.FromString,
            )

        return wrapper

    return decorate


def _replayed(earlier: WriteRequest, name: str, decode):
    if earlier.method != name:
        raise InvalidArgument(FieldError("request_id", f"{earlier.request_id!r} was used for {earlier.method}; "
                                         f"give {name} a new id"))
    if earlier.response is None:
        raise AlreadyExists(f"request {earlier.request_id!r} was applied already, but its answer was not kept; "
                            "read the current state instead of retrying")
    return decode(earlier.response)
