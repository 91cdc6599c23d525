"""Domain errors become gRPC statuses (table: mixprec.errors.status_code) on every servicer method."""

from __future__ import annotations

import functools

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mixprec.errors import InvalidArgument, MixprecError, status_code


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


async def abort_with(context: grpc.aio.ServicerContext, err: MixprecError) -> None:
    """Ends the call with `err`'s status code (and field details for INVALID_ARGUMENT); raises."""
    if isinstance(err, InvalidArgument):
        await context.abort_with_status(rpc_status.to_status(_invalid_argument_status(err)))
    await context.abort(status_code(err), str(err))


def maps_domain_errors(method):
    """Turns domain errors raised by a unary servicer method into their status codes."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except MixprecError as err:
            await abort_with(context, err)

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
