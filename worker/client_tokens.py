"""Which callers a worker's InferenceService serves: the client tokens its file lists.

The worker checks tokens itself, from a file (`mixprec worker --client-tokens FILE`, in Kubernetes a
mounted Secret) of one token or its SHA-256 per line, rather than asking the control plane: a
worker keeps serving while the control plane is away, and inference must not add a round trip to
it per request. The file is read again when it changes (checked at most every few seconds), so a
token is added or revoked by rewriting the file, without a restart. Mint such tokens with `mixprec
token create NAME --role client --endpoint E`: the client role may call nothing on the control
plane, so a leaked inference token cannot touch policies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time

from mixprec.errors import FieldError, InvalidArgument

log = logging.getLogger(__name__)

RECHECK_S = 5.0
MAX_FILE_BYTES = 1_000_000
_HASH = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"mxp_[A-Za-z0-9_-]{43}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_client_tokens(text: str, path: str) -> frozenset[str]:
    """The SHA-256 of every token a client-token file lists (tokens are hashed as they are read)."""
    hashes = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if _TOKEN.fullmatch(line):
            hashes.add(token_hash(line))
        elif _HASH.fullmatch(line.lower()):
            hashes.add(line.lower())
        else:
            raise InvalidArgument(FieldError("--client-tokens", f"{path} line {number} is neither a mixprec token "
                                                                "(mxp_...) nor the SHA-256 of one (64 hex digits)"))
    return frozenset(hashes)


class ClientTokens:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._hashes, self._stamp = self._load()
        self._checked = time.monotonic()

    def _load(self) -> tuple[frozenset[str], tuple[int, int]]:
        try:
            stat = os.stat(self.path)
            if stat.st_size > MAX_FILE_BYTES:
                raise InvalidArgument(FieldError("--client-tokens", f"{self.path} is larger than "
                                                                    f"{MAX_FILE_BYTES} bytes"))
            with open(self.path, encoding="utf-8") as f:
                text = f.read(MAX_FILE_BYTES + 1)
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidArgument(FieldError("--client-tokens", f"cannot read {self.path}: "
                                                                f"{getattr(err, 'strerror', None) or err}")) from None
        return parse_client_tokens(text, self.path), (stat.st_mtime_ns, stat.st_size)

    def _fresh(self) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < RECHECK_S:
                return self._hashes
            self._checked = now
            try:
                stat = os.stat(self.path)
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._hashes, self._stamp = self._load()
                    log.info("client tokens re-read from %s: %d accepted", self.path, len(self._hashes))
            except (OSError, InvalidArgument) as err:  # keep the last good set; said at most every RECHECK_S
                log.warning("client tokens: keeping the %d read before (%s)", len(self._hashes), err)
            return self._hashes

    def refusal(self, token: str) -> str | None:
        """Why a call with `token` may not be served, or None when it may."""
        if not token:
            return "this worker requires a client token: pass --token or set MIXPREC_TOKEN"
        if token_hash(token) not in self._fresh():
            return "the token is not one of this worker's client tokens"
        return None
