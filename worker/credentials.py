"""The token a bootstrap token issued this worker, kept in its state directory (mode 0600).

The control plane issues a worker id its own token once; a worker that lost it must be given a new
one by an admin (`mixprec takeover` revokes the old), so it is written before it is used.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"mxp_[A-Za-z0-9_-]{43}")


class IssuedToken:
    def __init__(self, directory: str | os.PathLike, endpoint: str, worker_id: str):
        self.path = pathlib.Path(directory) / f"{endpoint}.{worker_id}.token"

    def load(self) -> str | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read this worker's token at %s (%s); connecting with MIXPREC_TOKEN", self.path, err)
            return None
        if _TOKEN.fullmatch(text) is None:
            log.error("%s holds no mixprec token; connecting with MIXPREC_TOKEN", self.path)
            return None
        return text

    def save(self, token: str) -> None:
        """Written whole or not at all, readable by this user only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)

    def keep(self, token: str) -> str:
        """Saves the token; where it is kept (memory only, with an error logged, when it cannot be written)."""
        try:
            self.save(token)
        except OSError as err:
            log.error("cannot write this worker's token to %s (%s): it lasts until the process ends; an admin "
                      "must run mixprec takeover for a restart to connect", self.path, err)
            return "memory only"
        return str(self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
