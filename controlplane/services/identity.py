"""Who a worker is: worker-bound tokens, bootstrap issuance, and the worker-id lease every replica sees.

A worker id belongs to one live stream anywhere in the fleet: its lease row names the stream, its
replica and its token, and the replica's heartbeat keeps extending it (a replica that died lets its
leases expire). A second stream may take a live id only with the holder's own worker-bound token (the
same worker restarting before its old connection was noticed gone); anyone else is refused. Taking an
id from its holder is an admin's explicit, audited call (`take_over`).

A bootstrap token (role agent, `bootstrap`) issues each worker id its own token once, at its first
hello; the worker keeps it and connects with it from then on. Once a worker id has a live token, the
bootstrap token cannot connect as that id again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from controlplane import domain
from controlplane.auth.roles import Principal, Role
from controlplane.auth.tokens import new_token, token_hash
from controlplane.services.checks import check_name, check_text, check_worker_id
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec.errors import AlreadyExists, FieldError, InvalidArgument, MixprecError, NotFound, PermissionDenied

LEASE_SECONDS = 15.0   # a replica that stops extending its leases frees their ids after this long


def issued_token_name(endpoint: str, worker_id: str) -> str:
    """A readable, unique DNS label for the token a bootstrap token issues to one worker id."""
    slug = re.sub(r"[^a-z0-9-]+", "-", worker_id.lower()).strip("-")[:40].strip("-") or "worker"
    digest = hashlib.sha256(f"{endpoint}\0{worker_id}".encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def _refuse_issued(uow: UnitOfWork, endpoint: str, worker_id: str) -> None:
    if uow.tokens.live_for_worker(endpoint, worker_id):
        raise PermissionDenied(f"worker id {worker_id!r} of endpoint {endpoint!r} has its own token already: "
                               "a bootstrap token issues it once. Connect with that token (the worker keeps it "
                               "in its state directory), or an admin runs mixprec takeover")


def may_take_over(lease: domain.WorkerLease, claimant: Principal) -> bool:
    """The holder's own worker-bound token may (a restart); with --auth off anyone may (no identities)."""
    if claimant.token_id is None:
        return lease.token_id is None
    return claimant.worker_id is not None and lease.token_id == claimant.token_id


@dataclass(frozen=True)
class Claim:
    """A stream asking for a worker id."""

    principal: Principal
    endpoint: str
    worker_id: str
    replica: str
    stream: str


class WorkerIdentity:
    def __init__(self, uow: Callable[[], UnitOfWork], lease_seconds: float = LEASE_SECONDS):
        self._uow = uow
        self.lease_seconds = lease_seconds

    def claim(self, principal: Principal, endpoint: str, worker_id: str, replica: str, stream: str) -> None:
        """Gives the worker id to this stream; AlreadyExists while another stream holds it anywhere."""
        (refusal,) = self.claim_many([Claim(principal, endpoint, worker_id, replica, stream)])
        if refusal is not None:
            raise refusal

    def claim_many(self, claims: list[Claim]) -> list[MixprecError | None]:
        """Decides many claims in one transaction (a fleet reconnecting at once costs a few commits, not
        one each), each on its own savepoint: its refusal, or None where the stream holds the id now."""
        now = utcnow()
        outcomes: list[MixprecError | None] = [None] * len(claims)
        # In one order on every replica, so that two replicas' batches never wait on each other's row locks.
        order = sorted(range(len(claims)), key=lambda i: (claims[i].endpoint, claims[i].worker_id))
        with self._uow() as uow:
            for i in order:
                try:
                    with uow.savepoint():
                        self._claim(uow, claims[i], now)
                except MixprecError as err:
                    outcomes[i] = err
            uow.commit()
        return outcomes

    def _claim(self, uow: UnitOfWork, claim: Claim, now: datetime) -> None:
        principal, endpoint, worker_id = claim.principal, claim.endpoint, claim.worker_id
        if principal.worker_id is not None and principal.worker_id != worker_id:
            raise PermissionDenied(f"token {principal.name!r} belongs to worker id {principal.worker_id!r}, "
                                   f"not {worker_id!r}")
        if principal.bootstrap:  # first: held or not, an id that has its own token is never issued another
            _refuse_issued(uow, endpoint, worker_id)
        lease = uow.leases.get(endpoint, worker_id)
        if lease is not None and lease.expires_at > now and not may_take_over(lease, principal):
            raise AlreadyExists(f"worker id {worker_id!r} of endpoint {endpoint!r} is held by a live stream "
                                "of another token; give each worker its own token, or an admin runs "
                                "mixprec takeover")
        uow.leases.hold(domain.WorkerLease(endpoint, worker_id, principal.token_id, principal.name, claim.replica,
                                           claim.stream, now + timedelta(seconds=self.lease_seconds)), now)

    def issue(self, bootstrap: Principal, endpoint: str, worker_id: str, stream: str) -> tuple[str, Principal]:
        """The worker id's own token, made for the bootstrap token's stream that holds the id (once its
        hello was accepted, so a refused hello leaves no token nobody received); the lease is the new
        token's from then on, so the worker restarting with it may take its id over."""
        secret, now = new_token(), utcnow()
        with self._uow() as uow:
            lease = uow.leases.get(endpoint, worker_id)
            if lease is None or lease.stream != stream:
                raise AlreadyExists(f"worker id {worker_id!r} of endpoint {endpoint!r} was taken over meanwhile")
            _refuse_issued(uow, endpoint, worker_id)
            info = uow.tokens.add(domain.TokenInfo(
                name=issued_token_name(endpoint, worker_id), role=Role.AGENT.value, endpoint=endpoint,
                created_by=bootstrap.name, created_at=now, worker_id=worker_id,
            ), token_hash(secret))
            uow.audit.record(endpoint, "token.issue", bootstrap.name, "", name=info.name, worker_id=worker_id)
            uow.leases.hold(dataclasses.replace(lease, token_id=info.id, token_name=info.name), now)
            uow.commit()
        return secret, Principal(info.name, Role.AGENT, endpoint, worker_id, False, info.id)

    def release(self, endpoint: str, worker_id: str, stream: str) -> None:
        with self._uow() as uow:
            uow.leases.release(endpoint, worker_id, stream)
            uow.commit()

    def heartbeat(self, replica: str, token_ids: list[int], extend: bool = True,
                  orphans: set[str] = frozenset()) -> tuple[set[str], set[int]]:
        """Extends this replica's leases (when `extend`) and releases `orphans` (leases of streams gone
        from this replica): (the streams still holding theirs, which of `token_ids` have ended)."""
        now = utcnow()
        with self._uow() as uow:
            if orphans:
                uow.leases.release_streams(replica, orphans)
            held = uow.leases.extend(replica, now + timedelta(seconds=self.lease_seconds) if extend else None)
            ended: set[int] = set()
            for start in range(0, len(token_ids), 500):
                ended |= uow.tokens.ended(token_ids[start:start + 500], now)
            uow.commit()
        return held, ended

    def release_replica(self, replica: str) -> None:
        with self._uow() as uow:
            uow.leases.release_replica(replica)
            uow.commit()

    def take_over(self, endpoint: str, worker_id: str, reason: str, actor: str) -> tuple[bool, list[str]]:
        """Ends the stream holding the worker id, wherever it is, and revokes the tokens bound to it, so
        the id can be given to another worker: (whether a live stream held it, the revoked tokens' names)."""
        check_name(endpoint, "endpoint")
        check_worker_id(worker_id)
        check_text(reason=reason)
        if not reason.strip():
            raise InvalidArgument(FieldError("reason", "is required: say why, for the audit log"))
        now = utcnow()
        with self._uow() as uow:
            lease = uow.leases.drop(endpoint, worker_id)
            revoked = [t.name for t in uow.tokens.revoke_worker(endpoint, worker_id, now)]
            live = lease is not None and lease.expires_at > now
            if not live and not revoked:
                raise NotFound(f"no live stream and no token holds worker id {worker_id!r} of endpoint {endpoint!r}")
            uow.audit.record(endpoint, "worker.takeover", actor, reason, worker_id=worker_id, ended_stream=live,
                             holder=lease.token_name if lease else "", revoked_tokens=revoked)
            uow.commit()
        return live, revoked
