"""Who is looking at the dashboard: sessions, the API's tokens and roles, CSRF protection.

A browser logs in with the same bearer token the CLI uses. The token stays on the server, in this
replica's memory, under a random session id; the browser only holds that id in a cookie that scripts
cannot read (HttpOnly), that other sites' requests do not carry (SameSite=Strict), and that travels
only over TLS when the dashboard is served over TLS (Secure). Every request authenticates the token
again, and the session watch ends the sessions of a token revoked or expired on any replica. Every action also needs the session's
CSRF token in a header or form field, compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from controlplane.auth import ANONYMOUS, Action, Principal, authorize
from mixprec.errors import PermissionDenied, Unauthenticated

COOKIE = "mixprec_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_IDLE_S = 12 * 3600
MAX_SESSIONS = 10_000
MAX_TOKEN = 512


@dataclass
class Session:
    id: str
    csrf: str
    token: str | None  # None: not logged in (yet), or auth is off
    last_used: float
    token_id: int | None = None  # the token's row, so that its revocation ends this session


class SessionStore:
    """Sessions of this replica, oldest evicted first; an idle session expires. Sessions without a token
    (a login form's CSRF token, auth off) are kept apart, so that a flood of them evicts no logged-in one."""

    def __init__(self, idle_seconds: float = SESSION_IDLE_S, limit: int = MAX_SESSIONS):
        self._logged_in: OrderedDict[str, Session] = OrderedDict()
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._idle = idle_seconds
        self._limit = limit

    def _shelf(self, session: Session) -> OrderedDict[str, Session]:
        return self._anonymous if session.token is None else self._logged_in

    def new(self, token: str | None = None, token_id: int | None = None) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), token, time.monotonic(), token_id)
        shelf = self._shelf(session)
        shelf[session.id] = session
        while len(shelf) > self._limit:
            shelf.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._logged_in.get(session_id or "") or self._anonymous.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > self._idle:
            self.drop(session)
            return None
        session.last_used = now
        self._shelf(session).move_to_end(session.id)
        return session

    def drop(self, session: Session) -> None:
        self._shelf(session).pop(session.id, None)

    def token_ids(self) -> set[int]:
        return {s.token_id for s in list(self._logged_in.values()) if s.token_id is not None}

    def end_tokens(self, token_ids: set[int]) -> None:
        """Ends the sessions logged in with these (revoked or expired) tokens."""
        for session in [s for s in list(self._logged_in.values()) if s.token_id in token_ids]:
            session.token = None  # a live page holding it re-checks and is sent to log in
            self._logged_in.pop(session.id, None)


class Access:
    """The dashboard's checks, made with the API's own authenticator and role table."""

    def __init__(self, authenticate: Callable[[str], Principal] | None):
        """`authenticate` None: auth is off (loopback only); everyone acts as the API's anonymous admin."""
        self._authenticate = authenticate
        self.sessions = SessionStore()

    @property
    def required(self) -> bool:
        return self._authenticate is not None

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def principal(self, session: Session | None) -> Principal:
        """Runs in a worker thread: the authenticator may read the database. Raises Unauthenticated."""
        if self._authenticate is None:
            return ANONYMOUS
        if session is None or session.token is None:
            raise Unauthenticated("log in with an API token")
        return self._authenticate(session.token)

    def log_in(self, token: str) -> tuple[Session, Principal]:
        """Checks the token (worker thread) and opens a fresh session for it: a new id, against fixation."""
        token = token.strip()
        if not token or len(token) > MAX_TOKEN or not token.isprintable():
            raise Unauthenticated("that is not an API token (mixprec token create makes one)")
        principal = self._authenticate(token) if self._authenticate else ANONYMOUS
        return self.sessions.new(token, principal.token_id), principal

    @staticmethod
    def check_csrf(request: Request, session: Session | None, form: dict | None = None) -> None:
        sent = request.headers.get(CSRF_HEADER) or (form or {}).get(CSRF_FIELD, "")
        if session is None or not sent or not hmac.compare_digest(str(sent).encode(), session.csrf.encode()):
            raise PermissionDenied("the request's CSRF token is missing or wrong; reload the page and try again")
        origin = request.headers.get("origin")
        if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise PermissionDenied(f"requests from {origin[:100]} may not act on this dashboard")


def may(principal: Principal, action: Action, endpoint: str | None) -> bool:
    try:
        authorize(principal, action, endpoint)
    except PermissionDenied:
        return False
    return True


def set_cookie(response: Response, request: Request, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, max_age=SESSION_IDLE_S, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
