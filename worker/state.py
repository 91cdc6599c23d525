"""The worker's last applied assignment on local disk, so a restart serves it before the control plane answers."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from dataclasses import asdict, dataclass


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
        """The saved assignment, or when its file is damaged the one saved before it; and the damage, if any."""
        try:
            return self.load(), ""
        except ValueError as err:
            try:
                return self._read(self.previous_path), str(err)
            except ValueError:
                return None, str(err)

    def _read(self, path: pathlib.Path) -> AppliedAssignment | None:
        try:
            data = json.loads(path.read_text())
            return AppliedAssignment(data["endpoint"], int(data["version"]), dict(data["precision_map"]),
                                     data.get("nonce", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"state file {path} is damaged ({type(err).__name__}: {err})") from None

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
