"""Which version each endpoint's workers run: activation, one-call rollback, the fleet's state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta

from controlplane import domain
from controlplane.services.checks import check_name, check_text, check_version
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec import policy as lang
from mixprec.errors import Conflict, FailedPrecondition, FieldError, InvalidArgument

# A worker whose replica has not vouched for it for this long counts as disconnected
# (its replica may have died without saying goodbye).
STALE_AFTER = timedelta(seconds=45)
MAX_WORKER_ID = 200


@dataclass(frozen=True)
class Target:
    """What the workers of one endpoint should run: a validated snapshot the push layer hands out."""

    endpoint: str
    default_version: int
    maps: dict[int, tuple[tuple[str, str], ...]]  # version -> (layer, precision) in catalog order
    overrides: dict[str, int] = field(default_factory=dict)  # worker_id -> version (rollouts)
    report_round: int = 0  # raised when a rollout asks its step's workers (the overrides) to report again

    def version_for(self, worker_id: str) -> int:
        return self.overrides.get(worker_id, self.default_version)


@dataclass(frozen=True)
class ActivationResult:
    endpoint: str
    previous_version: int
    active_version: int


@dataclass(frozen=True)
class RollbackPreview:
    endpoint: str
    from_version: int
    to_version: int  # 0 with to_base: the rollback would store a new all-base version
    to_base: bool
    changes: list[tuple[str, str, str]]  # (layer, precision now, precision after)
    unchanged: int
    ends_rollout: str  # the open rollout the rollback would end, described; "" if none


class FleetService:
    def __init__(self, uow: Callable[[], UnitOfWork]):
        self._uow = uow

    # --- operators ------------------------------------------------------------------------------

    def activate(self, endpoint: str, version: int, actor: str = "", reason: str = "") -> ActivationResult:
        check_name(endpoint, "endpoint")
        check_version(version, "version")
        check_text(actor=actor, reason=reason)
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint, for_update=True)
            policy = uow.policies.get(endpoint, version)
            lang.resolve_or_raise(policy.spec, current.layers, current.base_precision)
            rollout = uow.rollouts.open_for(endpoint)
            if rollout is not None:
                raise FailedPrecondition(
                    f"rollout {rollout.id} of {endpoint!r} is {rollout.state}; abort it (mixprec rollout abort) or "
                    "roll back before activating another version"
                )
            if current.active_version == version:
                return ActivationResult(endpoint, version, version)
            self._switch(uow, current, version, "activate", actor, reason)
            uow.commit()
        return ActivationResult(endpoint, current.active_version, version)

    def rollback(
        self, endpoint: str, reason: str, to_version: int = 0, to_base: bool = False, actor: str = ""
    ) -> ActivationResult:
        if not reason.strip():
            raise InvalidArgument(FieldError("reason", "is required: say why, for the audit log"))
        _check_rollback_target(endpoint, to_version, to_base)
        check_text(actor=actor, reason=reason)
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint, for_update=True)
            if to_base:
                target = self._base_version(uow, current, actor, reason)
            else:
                target = self._rollback_target(uow, current, to_version)
            self._end_rollout(uow, endpoint, actor, reason)
            if current.active_version:
                uow.activations.mark_rolled_back(endpoint, current.active_version)
            self._switch(uow, current, target, "rollback", actor, reason)
            uow.commit()
        return ActivationResult(endpoint, current.active_version, target)

    def preview_rollback(self, endpoint: str, to_version: int = 0, to_base: bool = False) -> RollbackPreview:
        """What `rollback` with these arguments would change, layer by layer; nothing is written."""
        _check_rollback_target(endpoint, to_version, to_base)
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint)
            target = 0 if to_base else self._rollback_target(uow, current, to_version)
            old_map = dict(_ordered_map(uow, current, current.active_version))
            new_map = dict(_ordered_map(uow, current, target))
            rollout = uow.rollouts.open_for(endpoint)
        changes = lang.diff_maps(current.layers, old_map, new_map)
        return RollbackPreview(
            endpoint=endpoint, from_version=current.active_version, to_version=target, to_base=to_base,
            changes=changes, unchanged=len(current.layers) - len(changes),
            ends_rollout=(f"rollout {rollout.id} ({rollout.state}, v{rollout.from_version} -> v{rollout.to_version})"
                          if rollout else ""),
        )

    def _rollback_target(self, uow: UnitOfWork, current: domain.Endpoint, to_version: int) -> int:
        if not to_version:
            return self._last_known_good(uow, current)
        policy = uow.policies.get(current.name, to_version)
        lang.resolve_or_raise(policy.spec, current.layers, current.base_precision)
        return to_version

    def _switch(self, uow: UnitOfWork, current: domain.Endpoint, version: int, kind: str, actor: str,
                reason: str) -> None:
        uow.endpoints.set_active(current.name, version)
        uow.activations.add(current.name, version, current.active_version, kind, actor, reason)
        uow.audit.record(current.name, kind, actor, reason, version=version, previous_version=current.active_version)

    def _end_rollout(self, uow: UnitOfWork, endpoint: str, actor: str, reason: str) -> None:
        """A rollback during a rollout ends it: its new version must not come back by itself."""
        rollout = uow.rollouts.open_for(endpoint)
        if rollout is None:
            return
        message = f"ended by a rollback ({reason}); every worker leaves v{rollout.to_version}"
        if not uow.rollouts.save(replace(rollout, state="ROLLED_BACK", message=message, updated_at=utcnow())):
            raise Conflict(f"rollout {rollout.id} of {endpoint!r} changed meanwhile; retry the rollback")
        uow.audit.record(endpoint, "rollout.rolled_back", actor, message, rollout=rollout.id)

    def _last_known_good(self, uow: UnitOfWork, current: domain.Endpoint) -> int:
        if not current.active_version:
            raise FailedPrecondition(f"endpoint {current.name!r} has no active version to roll back from")
        history = uow.activations.history(current.name)
        bad = {a.version for a in history if a.rolled_back} | {current.active_version}
        good = next((a.version for a in history if a.version not in bad), None)
        if good is None:
            raise FailedPrecondition(
                f"endpoint {current.name!r} has no earlier known-good version than {current.active_version}; "
                "roll back with --to-base or --to VERSION"
            )
        return good

    def _base_version(self, uow: UnitOfWork, current: domain.Endpoint, actor: str, reason: str) -> int:
        """All-base precision is stored as a policy version of its own, so it is audited like any other."""
        version = current.latest_version + 1
        uow.endpoints.advance_latest(current.name, expected=current.latest_version, new=version)
        uow.policies.add(
            domain.PolicyVersion(
                endpoint=current.name, version=version, parent_version=current.latest_version,
                spec=lang.PolicySpec(), author=actor, message=f"rollback to base precision: {reason}",
                created_at=utcnow(),
            )
        )
        uow.audit.record(current.name, "policy.create", actor, reason, version=version, to_base=True)
        return version

    def get_fleet(self, endpoint: str) -> tuple[domain.Endpoint, list[domain.WorkerState]]:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint)
            workers = uow.workers.list(endpoint)
        fresh_after = utcnow() - STALE_AFTER
        return current, [
            replace(w, connected=w.connected and w.last_seen >= fresh_after) for w in workers
        ]

    def list_audit(self, endpoint: str, limit: int = 100) -> list[domain.AuditEntry]:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            uow.endpoints.get(endpoint)
            return uow.audit.list(endpoint, limit=limit or 100)

    # --- the push layer -------------------------------------------------------------------------

    def target(self, endpoint: str) -> Target:
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint)
            return self._target(uow, current)

    def _target(self, uow: UnitOfWork, current: domain.Endpoint) -> Target:
        overrides: dict[str, int] = {}
        rollout = uow.rollouts.open_for(current.name)
        if rollout is not None:
            overrides = {worker: rollout.to_version for worker in rollout.new_workers}
        versions = {current.active_version, *overrides.values()}
        maps = {v: _ordered_map(uow, current, v) for v in versions}
        return Target(current.name, current.active_version, maps, overrides,
                      rollout.report_round if rollout is not None else 0)

    def worker_connected(
        self, endpoint: str, worker_id: str, layers: list[str], replica: str, running_version: int,
        hardware: dict, inference_address: str,
    ) -> tuple[domain.WorkerState, Target]:
        """Registers a worker's hello; learns the catalog from the first worker of an endpoint."""
        check_hello(endpoint, worker_id, layers)
        layers = list(layers)
        # A hello whose catalog differs is refused before any row lock: it must not hold up activations.
        with self._uow() as uow:
            known = uow.endpoints.get(endpoint).layers
        if known and list(known) != layers:
            raise FailedPrecondition(_catalog_difference(endpoint, worker_id, known, layers))
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint, for_update=True)
            known = current.layers
            if not known or list(known) == layers:  # else another worker taught the catalog meanwhile
                if not known:
                    base_errors = lang.base_precision_errors(current.base_precision, layers)
                    if base_errors:
                        raise InvalidArgument(base_errors)
                    uow.endpoints.set_layers(endpoint, layers)
                    uow.audit.record(endpoint, "catalog.learn", worker_id, layers=len(layers))
                    current = uow.endpoints.get(endpoint)
                state = uow.workers.connect(endpoint, worker_id, replica, running_version, hardware,
                                            inference_address)
                target = self._target(uow, current)
                uow.commit()
                return state, target
        raise FailedPrecondition(_catalog_difference(endpoint, worker_id, known, layers))

    def record(self, updates: Iterable[domain.WorkerUpdate], reports: Iterable[domain.ReportRecord],
               connects: Iterable[domain.WorkerConnect] = ()) -> None:
        """Writes what streams learnt (hellos, ACKs, NACKs, reports, disconnects) in one transaction."""
        with self._uow() as uow:
            uow.workers.connect_all(sorted(connects, key=lambda c: (c.endpoint, c.worker_id)))
            # One order of row locks for every replica: concurrent flushes wait, never deadlock.
            ordered = sorted(updates, key=lambda u: (u.endpoint, u.worker_id))
            uow.workers.apply(ordered)
            for update in ordered:
                if update.last_nack_version:  # rare, and worth a notification: in the audit log
                    uow.audit.record(update.endpoint, "worker.nack", update.worker_id, update.last_nack_error or "",
                                     worker=update.worker_id, version=update.last_nack_version)
            uow.reports.add_all(reports)
            uow.commit()

    def release_replica(self, replica: str) -> None:
        with self._uow() as uow:
            uow.workers.disconnect_replica(replica)
            uow.commit()


def check_hello(endpoint: str, worker_id: str, layers: list[str]) -> None:
    check_name(endpoint, "hello.endpoint")
    if not worker_id or len(worker_id) > MAX_WORKER_ID or not worker_id.isprintable():
        raise InvalidArgument(FieldError("hello.worker_id", f"{worker_id!r} must be 1-{MAX_WORKER_ID} printable characters"))
    catalog_errors = lang.catalog_errors(layers, "hello.layers")
    if catalog_errors or not layers:
        raise InvalidArgument(catalog_errors or [FieldError("hello.layers", "is empty: send the model's catalog")])


def _check_rollback_target(endpoint: str, to_version: int, to_base: bool) -> None:
    check_name(endpoint, "endpoint")
    if to_version < 0:
        raise InvalidArgument(FieldError("to_version", f"must be a version number >= 1, got {to_version}"))
    if to_version and to_base:
        raise InvalidArgument(FieldError("to_version", f"{to_version} given together with to_base; choose one"))


def _ordered_map(uow: UnitOfWork, endpoint: domain.Endpoint, version: int) -> tuple[tuple[str, str], ...]:
    if version == 0:
        return tuple(lang.all_base(endpoint.layers, endpoint.base_precision).items())
    spec = uow.policies.get(endpoint.name, version).spec
    resolution = lang.resolve(spec, endpoint.layers, endpoint.base_precision)
    return tuple((r.layer, r.precision) for r in resolution.layers)


def _catalog_difference(endpoint: str, worker_id: str, expected: Iterable[str], got: Iterable[str]) -> str:
    """Says how two catalogs differ, in time linear in their sizes (a hello may carry 20,000 names)."""
    expected, got = list(expected), list(got)
    expected_set, got_set = set(expected), set(got)
    missing = [layer for layer in expected if layer not in got_set]
    extra = [layer for layer in got if layer not in expected_set]
    parts = [f"worker {worker_id!r} reports a layer catalog that differs from endpoint {endpoint!r}'s"]
    if missing:
        parts.append(f"missing {len(missing)}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"extra {len(extra)}: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if not missing and not extra:
        parts.append("same layers in another order")
    return "; ".join(parts)


