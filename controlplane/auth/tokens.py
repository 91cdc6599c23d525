"""Bearer tokens: made random, shown once, stored as a SHA-256 hash; looked up on every call.

A token is `mxp_` and 43 URL-safe characters (256 random bits). A plain SHA-256 is enough to
store it: unlike a password, a token cannot be guessed from a dictionary, so a slow hash adds
nothing but latency to every RPC.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

from controlplane import domain
from controlplane.auth.roles import Principal, Role
from controlplane.services.checks import check_worker_id
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec import policy as lang
from mixprec.errors import FieldError, InvalidArgument, Unauthenticated

PREFIX = "mxp_"
_TOKEN = re.compile(r"mxp_[A-Za-z0-9_-]{43}")
_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY = timedelta(days=3660)


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str, field_name: str = "expires") -> timedelta:
    """'90m', '12h', '30d', '2w' (or seconds: '3600s') as a timedelta of at most ten years."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(FieldError(field_name, f"{text[:40]!r} is not a duration such as 90m, 12h, 30d or 2w"))
    duration = timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    if duration > MAX_EXPIRY:
        raise InvalidArgument(FieldError(field_name, f"{text!r} is longer than the limit of {MAX_EXPIRY.days} days"))
    return duration


def _role(value: str, field_name: str = "role") -> Role:
    try:
        return Role(value)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidArgument(FieldError(field_name, f"unknown role {value[:40]!r}; choose one of {choices}")) from None


def _check_worker_binding(role: Role, endpoint: str, worker_id: str, bootstrap: bool) -> None:
    if not worker_id and not bootstrap:
        return
    field_name = "worker_id" if worker_id else "bootstrap"
    if role is not Role.AGENT:
        raise InvalidArgument(FieldError(field_name, f"is for agent tokens, not role {role}"))
    if worker_id and bootstrap:
        raise InvalidArgument(FieldError("worker_id", "a bootstrap token issues worker ids their tokens; it is "
                                                      "bound to none"))
    if worker_id:
        if not endpoint:
            raise InvalidArgument(FieldError("endpoint", "is required with worker_id: a worker id is one "
                                                         "endpoint's"))
        check_worker_id(worker_id)


class TokenService:
    """Create, list and revoke tokens (admins do, through the server or straight on the database)."""

    def __init__(self, uow: Callable[[], UnitOfWork], on_revoke: Callable[[], None] | None = None):
        self._uow = uow
        self._on_revoke = on_revoke

    def create(self, name: str, role: str, endpoint: str = "", expires_in: timedelta | None = None,
               created_by: str = "", worker_id: str = "", bootstrap: bool = False) -> tuple[str, domain.TokenInfo]:
        """Returns the token itself (the only time it exists outside the caller) and what is stored.

        `worker_id`: an agent token of one endpoint that may connect as that worker id only.
        `bootstrap`: an agent token that issues each worker id its own token once (WorkerIdentity)."""
        errors = lang.endpoint_name_errors(name, "name")
        if endpoint:
            errors += lang.endpoint_name_errors(endpoint, "endpoint")
        if errors:
            raise InvalidArgument(errors)
        parsed_role = _role(role)
        _check_worker_binding(parsed_role, endpoint, worker_id, bootstrap)
        now = utcnow()
        info = domain.TokenInfo(
            name=name, role=parsed_role.value, endpoint=endpoint or None, created_by=created_by[:200],
            created_at=now, expires_at=now + expires_in if expires_in else None, worker_id=worker_id or None,
            bootstrap=bootstrap,
        )
        token = new_token()
        with self._uow() as uow:
            stored = uow.tokens.add(info, token_hash(token))
            uow.audit.record(endpoint or "", "token.create", created_by[:200], "", name=name, role=parsed_role.value,
                             expires_at=info.expires_at.isoformat() if info.expires_at else None,
                             worker_id=info.worker_id, bootstrap=bootstrap)
            uow.commit()
        return token, stored

    def list(self, include_revoked: bool = False) -> list[domain.TokenInfo]:
        with self._uow() as uow:
            return uow.tokens.list(include_revoked)

    def revoke(self, name: str, revoked_by: str = "") -> domain.TokenInfo:
        errors = lang.endpoint_name_errors(name, "name")
        if errors:
            raise InvalidArgument(errors)
        with self._uow() as uow:
            info = uow.tokens.revoke(name, utcnow())
            uow.audit.record(info.endpoint or "", "token.revoke", revoked_by[:200], "", name=name)
            uow.commit()
        if self._on_revoke is not None:
            self._on_revoke()
        return info


class Authenticator:
    """Token -> Principal. Valid tokens are remembered for `cache_seconds`, so a revocation made on
    another replica takes effect there within that time (on this replica at once)."""

    def __init__(self, uow: Callable[[], UnitOfWork], cache_seconds: float = 5.0, cache_size: int = 10_000):
        self._uow = uow
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, Principal, datetime | None]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal if the token was looked up recently; never touches the database."""
        digest = token_hash(token)
        with self._lock:
            hit = self._cache.get(digest)
            if hit is None:
                return None
            until, principal, expires_at = hit
            if time.monotonic() > until or (expires_at is not None and utcnow() >= expires_at):
                del self._cache[digest]
                return None
            return principal

    def authenticate(self, token: str) -> Principal:
        if not token:
            raise Unauthenticated("this server requires a token: pass --token or set MIXPREC_TOKEN")
        if _TOKEN.fullmatch(token) is None:  # refused before any lookup: garbage never reaches SQL
            raise Unauthenticated("the token is not a mixprec token (they start with mxp_)")
        principal = self.cached(token)
        if principal is not None:
            return principal
        digest = token_hash(token)
        with self._uow() as uow:
            info = uow.tokens.by_hash(digest)
        now = utcnow()
        if info is None:
            raise Unauthenticated("unknown token")
        if info.revoked_at is not None:
            raise Unauthenticated(f"token {info.name!r} was revoked")
        if info.expires_at is not None and now >= info.expires_at:
            raise Unauthenticated(f"token {info.name!r} expired at {info.expires_at:%Y-%m-%d %H:%M:%S}Z")
        principal = Principal(info.name, Role(info.role), info.endpoint, info.worker_id, info.bootstrap, info.id,
                              credential=digest)
        with self._lock:
            self._cache[digest] = (time.monotonic() + self._cache_seconds, principal, info.expires_at)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def forget(self) -> None:
        """Drop every remembered token (after a revocation on this replica)."""
        with self._lock:
            self._cache.clear()

    def token_ids(self) -> set[int]:
        """The tokens remembered now (the session watch asks the database whether they still hold)."""
        with self._lock:
            return {p.token_id for _, p, _ in self._cache.values() if p.token_id is not None}

    def forget_ids(self, token_ids: set[int]) -> None:
        with self._lock:
            for digest in [d for d, (_, p, _) in self._cache.items() if p.token_id in token_ids]:
                del self._cache[digest]
