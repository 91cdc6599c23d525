"""Checks of request fields shared by the services; each error names the field and the value."""

from __future__ import annotations

import json

from mixprec import policy as lang
from mixprec.errors import FieldError, InvalidArgument

MAX_TEXT = 10_000
MAX_WORKER_ID = 128  # the edge's limit (api.limits) and the lease's column


def check_name(name: str, field_name: str) -> None:
    errors = lang.endpoint_name_errors(name, field_name)
    if errors:
        raise InvalidArgument(errors)


def check_worker_id(worker_id: str, field_name: str = "worker_id") -> None:
    if not worker_id or len(worker_id) > MAX_WORKER_ID or not worker_id.isprintable():
        raise InvalidArgument(FieldError(field_name, f"{worker_id[:MAX_WORKER_ID]!r} must be 1-{MAX_WORKER_ID} "
                                                     "printable characters"))


def check_version(version: int, field_name: str, allow_latest: bool = False) -> None:
    if version < (0 if allow_latest else 1):
        hint = "0 for the latest or " if allow_latest else ""
        raise InvalidArgument(FieldError(field_name, f"must be {hint}a version number >= 1, got {version}"))


def text_errors(**fields: str) -> list[FieldError]:
    return [
        FieldError(name, f"is {len(value)} characters long; the limit is {MAX_TEXT}")
        for name, value in fields.items()
        if len(value) > MAX_TEXT
    ]


MAX_ARTIFACT = 1_000_000


def check_artifact(artifact: str) -> None:
    if not artifact:
        return
    if len(artifact) > MAX_ARTIFACT:
        raise InvalidArgument(FieldError("artifact_json", f"is {len(artifact)} bytes; the limit is {MAX_ARTIFACT}"))
    try:
        json.loads(artifact)
    except ValueError as err:
        raise InvalidArgument(FieldError("artifact_json", f"is not valid JSON ({err})")) from None


def check_text(**fields: str) -> None:
    errors = text_errors(**fields)
    if errors:
        raise InvalidArgument(errors)
