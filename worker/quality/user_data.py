"""A user's own evaluation data (`--data FILE`): read, validated and bounded on the machine that measures.

Formats, by the file's name: `.jsonl` / `.ndjson` is JSON Lines (one object a line), anything else plain
text (one record a line). Blank lines are skipped.

* decoders: `{"text": ...}` or `{"prompt": ..., "completion": ...}` (the two read as one text); plain
  text: the line is the text. The texts are cut into windows that open with BOS (worker.quality.language).
* embedders: `{"query": ..., "document": ..., "label": NUMBER}` (label optional; ranking metrics and a
  user's log-loss read it); plain text: `query<TAB>document[<TAB>label]`.

The data stays where it is read: only the metrics measured on it travel (to the control plane, a sweep
artifact); the artifact records its fingerprint (sha256, bytes, records), never its text.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from dataclasses import dataclass

from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import MAX_DATA_BYTES as DEFAULT_MAX_BYTES
from worker.quality.docstrings import Pair

MAX_RECORDS = 100_000
MAX_FIELD_CHARS = 100_000        # one text, query or document
JSON_LINES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class DataSet:
    pairs: tuple[Pair, ...]      # decoders: one text in each pair's `query`
    fingerprint: dict            # path, format, sha256, bytes, records: what an artifact may say of it


def load_data(path: str, decoder: bool, max_bytes: int = DEFAULT_MAX_BYTES, option: str = "--data") -> DataSet:
    """The records of `path`, each checked; the first bad one is refused with its line and field."""
    if max_bytes < 1:
        raise InvalidArgument(FieldError("--max-data-bytes", f"must be >= 1, got {max_bytes}"))
    file = pathlib.Path(path)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            raise InvalidArgument(FieldError(option, f"{path} is {size} bytes; the limit is {max_bytes} "
                                             "(--max-data-bytes)"))
        raw = file.read_bytes()
    except OSError as e:
        raise InvalidArgument(FieldError(option, f"cannot read {path}: {e.strerror or e}")) from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InvalidArgument(FieldError(option, f"{path} is not UTF-8 (byte {e.start})")) from None
    json_lines = file.suffix.lower() in JSON_LINES
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(pairs) >= MAX_RECORDS:
            raise InvalidArgument(FieldError(f"{option} line {number}", f"more than {MAX_RECORDS} records"))
        where = f"{option} line {number}"
        record = _json_record(line, where) if json_lines else _text_record(line, decoder, where)
        pairs.append(_decoder_pair(record, where) if decoder else _embedder_pair(record, where))
    if len(pairs) < 2:
        raise InvalidArgument(FieldError(option, f"{path} has {len(pairs)} record(s); at least 2 are needed"))
    fingerprint = {"path": file.name, "format": "jsonl" if json_lines else "text",
                   "sha256": hashlib.sha256(raw).hexdigest(), "bytes": size, "records": len(pairs)}
    return DataSet(tuple(pairs), fingerprint)


def _json_record(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InvalidArgument(FieldError(where, f"is not JSON ({e.msg} at column {e.colno})")) from None
    if not isinstance(record, dict):
        raise InvalidArgument(FieldError(where, f"is a JSON {type(record).__name__}; each line must be an object"))
    return record


def _text_record(line: str, decoder: bool, where: str) -> dict:
    if decoder:
        return {"text": line}
    fields = line.split("\t")
    if len(fields) not in (2, 3):
        raise InvalidArgument(FieldError(where, f"has {len(fields)} tab-separated field(s); expected "
                                         "query<TAB>document[<TAB>label]"))
    record = {"query": fields[0], "document": fields[1]}
    if len(fields) == 3:
        try:
            record["label"] = float(fields[2])
        except ValueError:
            raise InvalidArgument(FieldError(f"{where} label", f"{fields[2]!r} is not a number")) from None
    return record


def _text_field(record: dict, name: str, where: str, required: bool = True) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if value is None else f"{value!r:.40} is not a non-empty string"
        raise InvalidArgument(FieldError(f"{where} field {name!r}", shown))
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidArgument(FieldError(f"{where} field {name!r}", f"has {len(value)} characters; the limit is "
                                         f"{MAX_FIELD_CHARS}"))
    return value


def _decoder_pair(record: dict, where: str) -> Pair:
    if "text" in record:
        text = _text_field(record, "text", where)
    elif "prompt" in record or "completion" in record:
        text = _text_field(record, "prompt", where) + _text_field(record, "completion", where)
    else:
        raise InvalidArgument(FieldError(where, f"has fields {sorted(record)}; a decoder's record has 'text', or "
                                         "'prompt' and 'completion'"))
    return Pair(_source(where), text, "")


def _embedder_pair(record: dict, where: str) -> Pair:
    query, document = _text_field(record, "query", where), _text_field(record, "document", where)
    label = record.get("label")
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            raise InvalidArgument(FieldError(f"{where} field 'label'", f"{label!r} is not a finite number"))
        label = float(label)
    return Pair(_source(where), query, document, label)


def query_groups(pairs: tuple[Pair, ...]) -> list[list[int]]:
    """Indices of consecutive pairs that share a query: one ranking list, one batch of a user's embedder
    metric, never split between calibration and held-out data."""
    groups: list[list[int]] = []
    for i, pair in enumerate(pairs):
        if groups and pairs[groups[-1][0]].query == pair.query:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def split_data(pairs: tuple[Pair, ...], count: int) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(calibration, held out): `count` of the query groups (decoders: of the texts), spread evenly over the
    file, are held out (at most all but one); no text is on both sides."""
    groups = query_groups(pairs)
    if count <= 0 or len(groups) < 2:
        return pairs, ()
    count = min(count, len(groups) - 1)
    held = {int((j + 0.5) * len(groups) / count) for j in range(count)}
    calibration = tuple(pairs[i] for k, g in enumerate(groups) if k not in held for i in g)
    return calibration, tuple(pairs[i] for k, g in enumerate(groups) if k in held for i in g)


def _source(where: str) -> str:
    return "line " + where.rsplit(" line ", 1)[-1]
