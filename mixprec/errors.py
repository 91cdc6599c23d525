"""Domain errors shared by the control plane, the worker and the CLI.

Each error says what is wrong in terms of the caller's input. `status_code` is the one table from
errors to gRPC codes: the server answers with it, and the CLI turns codes into exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class MixprecError(Exception):
    """Base of every error a caller can cause or act on."""


class InvalidArgument(MixprecError):
    def __init__(self, errors: list[FieldError] | FieldError):
        self.errors = [errors] if isinstance(errors, FieldError) else list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


class NotFound(MixprecError):
    pass


class AlreadyExists(MixprecError):
    pass


class Conflict(MixprecError):
    """A compare-and-swap lost: the caller's view is stale; re-read and retry."""


class FailedPrecondition(MixprecError):
    """The request is well-formed but the system is not in a state that allows it."""


class Unavailable(MixprecError):
    """A dependency (the database) cannot be reached; retrying later may succeed."""


class Unauthenticated(MixprecError):
    """The call carries no token, or one that is unknown, expired or revoked."""


class PermissionDenied(MixprecError):
    """The caller is known but its role or endpoint scope does not allow the call."""


class ResourceExhausted(MixprecError):
    """A per-caller or per-request limit was reached (streams per token, message size)."""


STATUS_BY_ERROR: dict[type[MixprecError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Conflict: grpc.StatusCode.ABORTED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code(err: MixprecError) -> grpc.StatusCode:
    return next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(err, cls)), grpc.StatusCode.INTERNAL)
