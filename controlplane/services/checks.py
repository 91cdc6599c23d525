"""Checks of request fields shared by the services; each error names the field and the value."""

from __future__ import annotations

from mixprec import policy as lang
from mixprec.errors import FieldError, InvalidArgument

MAX_TEXT = 10_000


def check_name(name: str, field_name: str) -> None:
    errors = lang.endpoint_name_errors(name, field_name)
    if errors:
        raise InvalidArgument(errors)


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


def check_text(**fields: str) -> None:
    errors = text_errors(**fields)
    if errors:
        raise InvalidArgument(errors)
