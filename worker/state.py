"""The worker's last applied assignment on local disk, so a restart serves it before the control plane answers."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
from dataclasses import asdict, dataclass

from mixprec.documents import json_depth, short_repr

# What a state file may hold: the control plane's own limits (a catalog of 20,000 names of 200
# characters, 32-bit versions), so a file outside them was not written by this worker.
MAX_STATE_BYTES = 16 * 2**20
MAX_STATE_DEPTH = 2          # {"precision_map": {...}, ...}
MAX_VERSION = 2**31 - 1
MAX_LAYERS = 20_000
MAX_TEXT = {"endpoint": 63, "nonce": 64, "layer": 200, "precision": 32}


@dataclass(frozen=True)
class AppliedAssignment:
    endpoint: str
    version: int
    precision_map: dict[str, str]
    nonce: str = ""


class StateStore:
    def __init__(self, directory: str | os.PathLike, endpoint: str, worker_id: str):
        self.path = pathlib.Path(directory) / f"{endpoint}.{worker_id}.assignment.json"
        self.previous_path = self.path.with_name(self.path.name.replace(".assignment.json", ".previous.json"))

    def load(self) -> AppliedAssignment | None:
        return self._read(self.path)

    def load_last_good(self) -> tuple[AppliedAssignment | None, str]:
        """The saved assignment, or when its file is damaged the one saved before it; and the damage, if any.

        A damaged file is set aside (renamed to NAME.bad-TIME, kept for whoever looks into it), so that
        it is neither read again at the next start nor kept as the "last good copy" by the next save."""
        try:
            return self.load(), ""
        except ValueError as err:
            problem = f"{err}; {self._set_aside(self.path)}"
        try:
            return self._read(self.previous_path), problem
        except ValueError as err:
            return None, f"{problem}; so is the copy before it ({err}; {self._set_aside(self.previous_path)})"

    def _read(self, path: pathlib.Path) -> AppliedAssignment | None:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ValueError(f"state file {path} cannot be read ({err.strerror})") from None
        try:
            return parse_assignment(raw)
        except ValueError as err:
            raise ValueError(f"state file {path} is damaged ({err})") from None

    @staticmethod
    def _set_aside(path: pathlib.Path) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target, n = path.with_name(f"{path.name}.bad-{stamp}"), 1
        while target.exists():
            target, n = path.with_name(f"{path.name}.bad-{stamp}-{n}"), n + 1
        try:
            os.replace(path, target)
        except OSError as err:
            return f"could not set it aside ({err.strerror})"
        return f"set aside as {target.name}"

    def save(self, applied: AppliedAssignment) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # the last good copy, for when this one is damaged later
            self._write(self.previous_path, self.path.read_bytes())
        self._write(self.path, json.dumps(asdict(applied)).encode())

    @staticmethod
    def _write(path: pathlib.Path, data: bytes) -> None:
        # Write-then-rename: a crash leaves the old file or the new one, never half of one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".assignment-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def parse_assignment(raw: bytes) -> AppliedAssignment:
    """A state file's bytes as an assignment; ValueError saying what is wrong (size, depth, shape, type, range)."""
    if len(raw) > MAX_STATE_BYTES:
        raise ValueError(f"larger than the limit of {MAX_STATE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start})") from None
    depth = json_depth(text)
    if depth > MAX_STATE_DEPTH:  # checked before parsing: json.loads recurses
        raise ValueError(f"nests {depth} levels deep; the limit is {MAX_STATE_DEPTH}")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"holds {type(data).__name__}, not an object")
    missing = [key for key in ("endpoint", "version", "precision_map") if key not in data]
    if missing:
        raise ValueError(f"has no {', '.join(missing)}")
    version = data["version"]
    # 0 too: the control plane assigns version 0 (all base) to an endpoint that has none active.
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version is {short_repr(version)}; it must be a whole number from 0 to {MAX_VERSION}")
    endpoint, nonce, precision_map = data["endpoint"], data.get("nonce", ""), data["precision_map"]
    _check_text("endpoint", endpoint)
    _check_text("nonce", nonce)
    if not isinstance(precision_map, dict) or len(precision_map) > MAX_LAYERS:
        raise ValueError(f"precision_map must be an object of at most {MAX_LAYERS} layers, got "
                         f"{short_repr(precision_map)}")
    for layer, precision in precision_map.items():
        _check_text("layer", layer)
        _check_text("precision", precision)
    return AppliedAssignment(endpoint, version, precision_map, nonce)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a state file holds")


def _check_text(what: str, value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT[what]:
        raise ValueError(f"{what} must be text of at most {MAX_TEXT[what]} characters, got {short_repr(value)}")
