"""What each page and live region needs, read through the service layer the gRPC servicers use.

Every method here blocks (the services use the database): the web edge calls them in the control
plane's worker threads. Nothing here knows SQL or HTTP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from controlplane import domain
from controlplane.auth import Principal
from controlplane.services.fleet import FleetService, RollbackPreview
from controlplane.services.policies import PolicyService
from controlplane.services.rollouts import RolloutService
from controlplane.services.write_requests import RequestLog
from controlplane.web import views
from mixprec import policy as lang
from mixprec.errors import NotFound

AUDIT_SHOWN = 50


@dataclass(frozen=True)
class PolicyRow:
    version: int
    parent: int
    author: str
    message: str
    created: str
    rules: int
    has_sweep: bool
    marks: tuple[str, ...]


@dataclass(frozen=True)
class AuditRow:
    at: str
    ago: str
    action: str
    actor: str
    reason: str
    detail: str


@dataclass(frozen=True)
class EndpointState:
    """Everything of the endpoint page that changes by itself (sent again when it does)."""

    endpoint: domain.Endpoint
    overview: views.OverviewRow
    fleet: list[views.FleetRow]
    rollout: views.RolloutView | None
    policies: list[PolicyRow]
    audit: list[AuditRow]


class Pages:
    def __init__(self, policies: PolicyService, fleet: FleetService, rollouts: RolloutService,
                 requests: RequestLog | None = None):
        self.policies = policies
        self.fleet = fleet
        self.rollouts = rollouts
        self.requests = requests  # actions are applied once per request id

    def _latest_rollout(self, endpoint: str) -> domain.Rollout | None:
        try:
            return self.rollouts.get(endpoint)
        except NotFound:
            return None

    def overview(self, principal: Principal) -> list[views.OverviewRow]:
        rows = []
        for endpoint in self.policies.list_endpoints():
            if not principal.may_see(endpoint.name):
                continue
            try:
                rows.append(self._overview_row(endpoint))
            except NotFound:
                continue  # deleted between the listing and now
        return rows

    def _overview_row(self, endpoint: domain.Endpoint) -> views.OverviewRow:
        _, workers = self.fleet.get_fleet(endpoint.name)
        return views.overview_row(endpoint, workers, self.fleet.target(endpoint.name),
                                  self._latest_rollout(endpoint.name))

    def endpoint_state(self, name: str) -> EndpointState:
        endpoint, workers = self.fleet.get_fleet(name)
        target = self.fleet.target(name)
        rollout = self._latest_rollout(name)
        versions = self.policies.list_policies(name)
        marks: dict[int, list[str]] = {}
        if endpoint.active_version:
            marks.setdefault(endpoint.active_version, []).append("active")
        if rollout and rollout.open:
            marks.setdefault(rollout.to_version, []).append("rolling out")
        policies = [
            PolicyRow(v.version, v.parent_version, v.author or "-", v.message, views.clock(v.created_at),
                      len(v.spec.rules), bool(v.artifact), tuple(marks.get(v.version, ())))
            for v in reversed(versions)
        ]
        audit = [
            AuditRow(views.clock(e.at), views.age(e.at), e.action, e.actor or "-", e.reason,
                     ", ".join(f"{k}={v}" for k, v in sorted(e.detail.items())))
            for e in self.fleet.list_audit(name, AUDIT_SHOWN)
        ]
        return EndpointState(
            endpoint=endpoint,
            overview=views.overview_row(endpoint, workers, target, rollout),
            fleet=views.fleet_rows(workers, target, rollout),
            rollout=views.rollout_view(rollout, len([w for w in workers if w.connected])) if rollout else None,
            policies=policies,
            audit=audit,
        )

    def diff(self, name: str, from_version: int, to_version: int) -> views.LayerGrid:
        """Both versions resolved against the endpoint's catalog, as a layer grid of the second."""
        old, endpoint = self.policies.get_policy(name, from_version)
        new, _ = self.policies.get_policy(name, to_version)
        before = lang.resolve_or_raise(old.spec, endpoint.layers, endpoint.base_precision)
        after = lang.resolve_or_raise(new.spec, endpoint.layers, endpoint.base_precision)
        return views.layer_grid(endpoint.layers, after, before)

    def version_grid(self, name: str, version: int) -> views.LayerGrid:
        policy, endpoint = self.policies.get_policy(name, version)
        return views.layer_grid(endpoint.layers,
                                lang.resolve_or_raise(policy.spec, endpoint.layers, endpoint.base_precision))

    def sweep(self, name: str, version: int = 0) -> views.SweepView | None:
        """The sweep stored with `version`, or with the newest version that has one (0); None if none has."""
        if version:
            policy, _ = self.policies.get_policy(name, version)
            if not policy.artifact:
                raise NotFound(f"version {version} of {name!r} was not proposed by a sweep (it has no stored sweep)")
        else:
            policy = next((v for v in reversed(self.policies.list_policies(name)) if v.artifact), None)
            if policy is None:
                return None
        data = json.loads(policy.artifact)  # checked to be JSON when it was stored
        return views.sweep_view(policy.version, data if isinstance(data, dict) else {})

    def preview_rollback(self, name: str, to_version: int, to_base: bool) -> tuple[RollbackPreview, int]:
        """What the rollback would change, and how many connected workers it would reach."""
        preview = self.fleet.preview_rollback(name, to_version, to_base)
        _, workers = self.fleet.get_fleet(name)
        return preview, sum(w.connected for w in workers)
