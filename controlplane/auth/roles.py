"""Who may do what: roles, the actions they allow, and the endpoint scope of a principal."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mixprec.errors import PermissionDenied


class Role(str, enum.Enum):
    VIEWER = "viewer"      # reads: endpoints, policies, fleet, audit, rollouts
    OPERATOR = "operator"  # viewer + policies, activate, rollback, rollouts
    ADMIN = "admin"        # everything: endpoints (create, delete), tokens
    AGENT = "agent"        # only AgentService.Connect, for the endpoints in its scope
    CLIENT = "client"      # nothing here: a caller of workers' InferenceService (their --client-tokens)

    def __str__(self) -> str:
        return self.value


class Action(enum.Enum):
    READ = "read endpoints, policies, the fleet, rollouts and the audit log"
    WRITE_POLICY = "write policy versions"
    ACTIVATE = "activate a policy version"
    ROLLBACK = "roll back"
    ROLLOUT = "start, pause, resume, abort or promote rollouts"
    ADMIN_ENDPOINTS = "create or delete endpoints"
    ADMIN_TOKENS = "create, list or revoke tokens"
    CONNECT = "connect a worker agent"
    TAKE_OVER_WORKER = "take over a worker id"  # admin: ends the stream that holds it
    NOTIFICATIONS = "configure an endpoint's webhooks"  # admin: a webhook makes the server call out


_OPERATOR = frozenset({Action.READ, Action.WRITE_POLICY, Action.ACTIVATE, Action.ROLLBACK, Action.ROLLOUT})
ALLOWED: dict[Role, frozenset[Action]] = {
    Role.VIEWER: frozenset({Action.READ}),
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: frozenset(Action),
    Role.AGENT: frozenset({Action.CONNECT}),
    Role.CLIENT: frozenset(),
}

# Actions that are never about one endpoint: a scoped token cannot take them at all (a token
# limited to one endpoint must not mint tokens for others).
_GLOBAL_ACTIONS = frozenset({Action.ADMIN_TOKENS})


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a token's name and role, and the one endpoint it is limited to.
    An agent token may also be bound to one worker id, or be a bootstrap token (see WorkerLeases)."""

    name: str
    role: Role
    endpoint: str | None = None
    worker_id: str | None = None
    bootstrap: bool = False
    token_id: int | None = None  # the token's row; None for ANONYMOUS (--auth off)
    credential: str = ""  # the token's stored hash: what request ids belong to ("" without a token)

    def may_see(self, endpoint: str) -> bool:
        return self.endpoint is None or self.endpoint == endpoint


# With `--auth off` (loopback only) every call runs as this principal.
ANONYMOUS = Principal("anonymous", Role.ADMIN)


def authorize(principal: Principal, action: Action, endpoint: str | None) -> None:
    """Raises PermissionDenied unless `principal` may take `action` on `endpoint`.

    `endpoint` is None for calls that name no endpoint (listings, a stream before its hello): a
    scoped principal passes those and only ever sees its own endpoint in what they return.
    """
    if action not in ALLOWED[principal.role]:
        raise PermissionDenied(f"token {principal.name!r} has role {principal.role}, which may not {action.value}")
    if principal.endpoint is None:
        return
    if action in _GLOBAL_ACTIONS:
        raise PermissionDenied(
            f"token {principal.name!r} is limited to endpoint {principal.endpoint!r} and may not {action.value}"
        )
    if endpoint is not None and endpoint != principal.endpoint:
        raise PermissionDenied(
            f"token {principal.name!r} is limited to endpoint {principal.endpoint!r}, not {endpoint!r}"
        )
