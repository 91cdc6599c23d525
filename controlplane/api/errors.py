"""The one table from domain errors to gRPC status codes, applied to every servicer method."""

from __future__ import annotations

import functools
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mixprec.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    MixprecError,
    NotFound,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[MixprecError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.ABORTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code(err: MixprecError) -> grpc.StatusCode:
    for cls, code in STATUS_BY_ERROR.items():
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _invalid_argument_status(err: InvalidArgument) -> status_pb2.Status:
    # The message is for people; the BadRequest detail lets programs find each field.
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=e.field, description=e.message) for e in err.errors
            ]
        )
    )
    return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(err), details=[detail])


def maps_domain_errors(method):
    """Turns domain errors raised by a unary servicer method into their status codes."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except InvalidArgument as err:
            await context.abort_with_status(rpc_status.to_status(_invalid_argument_status(err)))
        except MixprecError as err:
            await context.abort(status_code(err), str(err))

    return wrapper


def field_errors_of(err: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs from an INVALID_ARGUMENT error's BadRequest detail, if any."""
    status = rpc_status.from_call(err)
    if status is None:
        return []
    pairs = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            pairs.extend((v.field, v.description) for v in bad.field_violations)
    return pairs
