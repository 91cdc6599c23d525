"""Write calls: run under the caller's deadline, applied once per request id, answered alike when retried.

A request id belongs to its caller (the token), the method and the endpoint: another token's or
endpoint's call with the same id is a call of its own, and the same id with other parameters is
refused. A call whose caller went away (deadline, lost connection) after its write committed still
finishes and keeps its answer, so the retry gets it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import uuid
from collections.abc import Awaitable
from typing import Callable, TypeVar

from google.protobuf.message import Message

from controlplane.api.edge import call_endpoint, current_principal
from controlplane.auth import Principal
from controlplane.blocking import run_blocking
from controlplane.services.write_requests import RequestLog
from controlplane.storage.write_requests import RequestKey, WriteRequest, WriteScope, current_scope
from mixprec.errors import AlreadyExists, FieldError, InvalidArgument, MixprecError

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 100
# A retry that finds its first call still finishing waits this long at most for that call's answer.
MAX_ANSWER_WAIT_S = 30.0
ANSWER_POLL_S = 0.05
Answer = TypeVar("Answer")


def check_request_id(given: str) -> None:
    if len(given) > MAX_REQUEST_ID or not given.isprintable():
        raise InvalidArgument(FieldError("request_id", f"{given[:40]!r}... must be at most "
                                         f"{MAX_REQUEST_ID} printable characters"))


def request_key(request_id: str, method: str, principal: Principal, endpoint: str, parameters: bytes) -> RequestKey:
    """The key of a call: `parameters` are its arguments without the request id, in a stable encoding."""
    return RequestKey(request_id, method, principal.credential or principal.name, endpoint,
                      hashlib.sha256(parameters).hexdigest())


def message_parameters(request: Message) -> bytes:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return copy.SerializeToString(deterministic=True)


async def applied_once(requests: RequestLog | None, key: RequestKey, time_remaining: float | None,
                       write: Callable[[], Awaitable[Answer]], encode: Callable[[Answer], bytes],
                       decode: Callable[[bytes], Answer]) -> Answer:
    """Runs `write` once per request key (its transactions record the key and honour the deadline);
    a retry with a known key gets the first call's answer, as `encode` kept it."""
    check_request_id(key.request_id)
    keyed = bool(key.request_id) and requests is not None
    if keyed:
        earlier = await run_blocking(requests.find, key)
        if earlier is not None:
            return await _replayed(requests, key, earlier, time_remaining, decode)
    # Without a key the call still gets a deadline-guarded transaction under a one-off id.
    scope = WriteScope.open(key if key.request_id else RequestKey(f"{key.method}-{uuid.uuid4().hex}", key.method),
                            time_remaining)

    async def write_and_keep() -> Answer:
        token = current_scope.set(scope)
        try:
            answer = await write()
        finally:
            current_scope.reset(token)
        if keyed and scope.recorded:
            try:
                await run_blocking(requests.keep_response, key, encode(answer))
            except MixprecError as err:  # the write stands; only a retry's answer is lost
                log.warning("could not keep the answer to request %s: %s", key.request_id, err)
        return answer

    if not keyed:
        return await write_and_keep()
    # Shielded: the RPC's task is cancelled when its caller goes away, but a write that committed
    # must still keep its answer for the retry.
    task = asyncio.ensure_future(write_and_keep())
    task.add_done_callback(_consume)
    return await asyncio.shield(task)


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a write whose caller had gone ended with %r", task.exception())


def write_rpc(response_type, kept: Callable[[Message], Message] | None = None):
    """Decorates a servicer method that writes; the servicer may have `_requests` (a RequestLog).
    `kept` turns the answer into what may be stored for retries (e.g. without a secret)."""

    def decorate(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            key = request_key(request.request_id, method.__name__, current_principal(), call_endpoint(),
                              message_parameters(request))
            return await applied_once(
                getattr(self, "_requests", None), key, context.time_remaining(),
                lambda: method(self, request, context),
                lambda response: (kept(response) if kept is not None else response).SerializeToString(),
                response_type.FromString,
            )

        return wrapper

    return decorate


async def _replayed(requests: RequestLog, key: RequestKey, earlier: WriteRequest, time_remaining: float | None,
                    decode):
    if earlier.fingerprint != key.fingerprint:
        raise InvalidArgument(FieldError("request_id", f"{key.request_id!r}: request id reused with other "
                                         f"parameters (an earlier {key.method} used it); give this call a new id"))
    # The first call may still be finishing (its caller gave up after the commit): wait for its answer.
    loop = asyncio.get_running_loop()
    patience = MAX_ANSWER_WAIT_S if time_remaining is None else max(0.0, time_remaining - 0.5)
    until = loop.time() + min(MAX_ANSWER_WAIT_S, patience)
    while earlier is not None and earlier.response is None and loop.time() < until:
        await asyncio.sleep(ANSWER_POLL_S)
        earlier = await run_blocking(requests.find, key)
    if earlier is None or earlier.response is None:
        raise AlreadyExists(f"request {key.request_id!r} was applied already, but its answer was not kept; "
                            "read the current state instead of retrying")
    return decode(earlier.response)
