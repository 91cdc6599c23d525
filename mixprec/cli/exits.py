"""Exit codes of the CLI and how errors map onto them."""

from __future__ import annotations

import sys

import grpc

from mixprec.errors import InvalidArgument, MixprecError, status_code

OK = 0
FAILURE = 1
INVALID_INPUT = 2
NOT_FOUND = 3
CONFLICT = 4
UNAVAILABLE = 5
NOT_ALLOWED = 6  # no valid token, or the token's role or scope does not allow the call

_BY_GRPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: INVALID_INPUT,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: CONFLICT,
    grpc.StatusCode.ABORTED: CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: CONFLICT,
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: INVALID_INPUT,
    grpc.StatusCode.UNAUTHENTICATED: NOT_ALLOWED,
    grpc.StatusCode.PERMISSION_DENIED: NOT_ALLOWED,
}

_HINTS = {
    grpc.StatusCode.ABORTED: "re-read the latest version (mixprec policy history) and retry with --parent set to it",
    grpc.StatusCode.UNAVAILABLE: "is the control plane running? (mixprec server, or set --server / MIXPREC_SERVER)",
    grpc.StatusCode.UNAUTHENTICATED: "pass a token with --token or MIXPREC_TOKEN (made by `mixprec token create`)",
}


def report_rpc_error(err: grpc.RpcError, server: str, request_id: str | None = None) -> int:
    code = err.code()
    detail = err.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in detail.lower():
        detail = f"cannot reach the control plane at {server}"
    print(f"error ({code.name}): {detail}", file=sys.stderr)
    if request_id and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        print(f"hint: the change was not made, or was made exactly once; retry with --request-id {request_id} "
              "to apply it at most once", file=sys.stderr)
    elif code in _HINTS:
        print(f"hint: {_HINTS[code]}", file=sys.stderr)
    return _BY_GRPC_CODE.get(code, FAILURE)


def report_domain_error(err: MixprecError) -> int:
    if isinstance(err, InvalidArgument):
        for field_error in err.errors:
            print(f"error: {field_error}", file=sys.stderr)
    else:
        print(f"error: {err}", file=sys.stderr)
    return _BY_GRPC_CODE.get(status_code(err), FAILURE)
