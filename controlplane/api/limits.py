"""Limits on every field of every request, checked at the API edge before anything reaches a
service, SQL or the policy matcher. One table; the README's Security section lists it.

Errors name the field and the limit and never echo the value (it may be megabytes long).
"""

from __future__ import annotations

import math

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mixprec.documents import json_depth
from mixprec.errors import FieldError, InvalidArgument

INT_MAX = 2**31 - 1        # versions, ids and counts are 32-bit integers in SQL
JSON_SAFE_INT = 2**53      # counters stored in JSON stay exact in every JSON reader
DEFAULT_TEXT = 200
DEFAULT_REPEATED = 64
DEFAULT_NUMBER = 1e12

# Longest string per field name (the same name means the same thing in every message).
TEXT_LIMITS: dict[str, int] = {
    "name": 63, "endpoint": 63, "role": 16, "kv_cache": 32, "precision": 32, "base_precision": 32,
    "actor": 100, "author": 100, "worker_id": 128, "nonce": 64, "report_id": 64,
    "match": 256, "layers": 200,
    "model": 200, "inference_address": 200, "device": 200, "kernel": 32, "dtype": 32, "torch_version": 64,
    "message": 10_000, "reason": 10_000, "error": 10_000,
    "artifact_json": 1_000_000, "url": 2_000, "events": 64,
}
# Most entries per repeated field or map.
REPEATED_LIMITS: dict[str, int] = {"layers": 20_000, "rules": 1_000, "steps": 20}
# Total characters of one request's `layers` list: the catalog is sent with every endpoint.
MAX_CATALOG_CHARS = 1_000_000
# Integer fields with a tighter range than INT_MAX.
INT_LIMITS: dict[str, int] = {"requests": JSON_SAFE_INT, "limit": 10_000, "expires_seconds": 3660 * 86400}
# (low, high) per number field; other doubles must be finite and within +-DEFAULT_NUMBER.
NUMBER_LIMITS: dict[str, tuple[float, float]] = {
    "percent": (0.0, 100.0),
    "bake_seconds": (0.0, 7 * 86400.0),
    "step_timeout_seconds": (0.0, 7 * 86400.0),
    "min_throughput_ratio": (0.0, 1000.0),
    "max_drop": (0.0, 1e6),
    "max_rise": (0.0, 1e6),
    "window_seconds": (0.0, 366 * 86400.0),
}
MAX_JSON_DEPTH = 32

_INTS = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT32,
         FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
         FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


class Undecodable:
    """What a request that is not a valid protobuf message decodes to (the edge refuses it)."""

    def __init__(self, reason: str):
        self.reason = reason


def lenient(deserialize):
    """A request deserializer that turns garbage bytes into Undecodable instead of an error."""
    if deserialize is None:
        return None

    def decode(raw: bytes):
        try:
            return deserialize(raw)
        except Exception as err:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return Undecodable(type(err).__name__)

    return decode


def check_request(message) -> None:
    """Raises InvalidArgument listing every field over its limit (or the bytes that are no message)."""
    if isinstance(message, Undecodable):
        raise InvalidArgument(FieldError("request", "is not a valid protobuf message of this method's type"))
    errors: list[FieldError] = []
    _walk(message, "", errors)
    if errors:
        raise InvalidArgument(errors[:20])


def _walk(message: Message, prefix: str, errors: list[FieldError]) -> None:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _check_map(field, value, path, errors)
        elif field.is_repeated:
            limit = REPEATED_LIMITS.get(field.name, DEFAULT_REPEATED)
            if len(value) > limit:
                errors.append(FieldError(path, f"has {len(value)} entries; the limit is {limit}"))
                continue
            if field.name == "layers":
                total = sum(len(v) for v in value)
                if total > MAX_CATALOG_CHARS:
                    errors.append(FieldError(path, f"has {total} characters in all; the limit is {MAX_CATALOG_CHARS}"))
                    continue
            for i, item in enumerate(value):
                _check_value(field, item, f"{path}[{i}]", errors)
        else:
            _check_value(field, value, path, errors)


def _check_map(field, value, path: str, errors: list[FieldError]) -> None:
    if len(value) > DEFAULT_REPEATED:
        errors.append(FieldError(path, f"has {len(value)} entries; the limit is {DEFAULT_REPEATED}"))
        return
    value_field = field.message_type.fields_by_name["value"]
    for key, item in value.items():
        _check_text(key, f"{path} key", 64, errors)
        shown = key[:64] if key[:64].isprintable() else repr(key[:64])
        if value_field.type in _FLOATS:
            _check_number(field.name, item, f"{path}[{shown}]", errors)
        elif value_field.message_type is not None:
            _walk(item, f"{path}[{shown}].", errors)
        else:
            _check_value(value_field, item, f"{path}[{shown}]", errors)


def _check_value(field, value, path: str, errors: list[FieldError]) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _walk(value, f"{path}.", errors)
    elif field.type == FieldDescriptor.TYPE_STRING:
        _check_text(value, path, TEXT_LIMITS.get(field.name, DEFAULT_TEXT), errors)
        if field.name == "artifact_json" and value and not errors:
            depth = json_depth(value)
            if depth > MAX_JSON_DEPTH:
                errors.append(FieldError(path, f"nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}"))
    elif field.type == FieldDescriptor.TYPE_BYTES:
        if len(value) > DEFAULT_TEXT:
            errors.append(FieldError(path, f"is {len(value)} bytes; the limit is {DEFAULT_TEXT}"))
    elif field.type in _INTS:
        limit = INT_LIMITS.get(field.name, INT_MAX)
        if value > limit or value < -limit:
            errors.append(FieldError(path, f"is {value}; the limit is {limit}"))
    elif field.type in _FLOATS:
        _check_number(field.name, value, path, errors)


def _check_text(value: str, path: str, limit: int, errors: list[FieldError]) -> None:
    if len(value) > limit:
        errors.append(FieldError(path, f"is {len(value)} characters long; the limit is {limit}"))
    elif "\x00" in value:
        errors.append(FieldError(path, f"contains a NUL character (at {value.index(chr(0))}); text may not"))


def _check_number(name: str, value: float, path: str, errors: list[FieldError]) -> None:
    low, high = NUMBER_LIMITS.get(name, (-DEFAULT_NUMBER, DEFAULT_NUMBER))
    if not math.isfinite(value):
        errors.append(FieldError(path, f"is {value}; it must be a finite number between {low:g} and {high:g}"))
    elif not low <= value <= high:
        errors.append(FieldError(path, f"is {value:g}; it must be between {low:g} and {high:g}"))
