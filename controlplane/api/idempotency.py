"""Write RPCs: run under the caller's deadline, applied once per `request_id`, answered alike when retried."""

from __future__ import annotations

import functools
import logging
import uuid

from controlplane.blocking import run_blocking
from controlplane.storage.write_requests import WriteScope, current_scope
from mixprec.errors import AlreadyExists, FieldError, InvalidArgument, MixprecError

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 100


def write_rpc(response_type):
    """Decorates a servicer method that writes; the servicer may have `_requests` (a RequestLog)."""

    def decorate(method):
        name = method.__name__

        @functools.wraps(method)
        async def wrapper(self, request, context):
            given = request.request_id
            if len(given) > MAX_REQUEST_ID or not given.isprintable():
                raise InvalidArgument(FieldError("request_id", f"{given[:40]!r}... must be at most "
                                                 f"{MAX_REQUEST_ID} printable characters"))
            requests = getattr(self, "_requests", None)
            if given and requests is not None:
                earlier = await run_blocking(requests.find, given)
                if earlier is not None:
                    return _replayed(earlier, name, response_type)
            # Without a key the call still gets a deadline-guarded transaction under a one-off id.
            scope = WriteScope.open(given or f"{name}-{uuid.uuid4().hex}", name, context.time_remaining())
            token = current_scope.set(scope)
            try:
                response = await method(self, request, context)
            finally:
                current_scope.reset(token)
            if given and requests is not None and scope.recorded:
                try:
                    await run_blocking(requests.keep_response, given, response.SerializeToString())
                except MixprecError as err:  # the write stands; only a retry's answer is lost
                    log.warning("could not keep the answer to request %s: %s", given, err)
            return response

        return wrapper

    return decorate


def _replayed(earlier, name: str, response_type):
    if earlier.method != name:
        raise InvalidArgument(FieldError("request_id", f"{earlier.request_id!r} was used for {earlier.method}; "
                                         f"give {name} a new id"))
    if earlier.response is None:
        raise AlreadyExists(f"request {earlier.request_id!r} was applied already, but its answer was not kept; "
                            "read the current state instead of retrying")
    return response_type.FromString(earlier.response)
