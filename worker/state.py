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

    def load(self) -> AppliedAssignment | None:
        try:
            data = json.loads(self.path.read_text())
            return AppliedAssignment(data["endpoint"], int(data["version"]), dict(data["precision_map"]),
                                     data.get("nonce", ""))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"state file {self.path} is damaged ({err}); remove it to start from base") from None

    def save(self, applied: AppliedAssignment) -> None:
        # Write-then-rename: a crash leaves the old file or the new one, never half of one.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".assignment-")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(applied), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
