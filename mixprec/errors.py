"""Domain errors shared by the control plane, the worker and the CLI.

Each error says what is wrong in terms of the caller's input. The gRPC edge maps them to status
codes in one table (controlplane/grpc_errors.py); the CLI maps status codes to exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass


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
