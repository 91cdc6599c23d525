"""Endpoints and their immutable, compare-and-swap versioned precision policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controlplane import domain
from controlplane.services.checks import check_artifact, check_name, check_text, check_version, text_errors
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork
from mixprec import policy as lang
from mixprec.errors import Conflict, FailedPrecondition, FieldError, InvalidArgument, NotFound


@dataclass(frozen=True)
class PolicyDiff:
    changes: list[tuple[str, str, str]]
    unchanged: int


class PolicyService:
    def __init__(self, uow: Callable[[], UnitOfWork], resolve: Callable[..., lang.Resolution] = lang.resolve):
        self._uow = uow
        self._resolve = resolve  # of the reads that resolve (ResolvePolicy, diffs, GetPolicy resolved)

    # --- endpoints ------------------------------------------------------------------------------

    def create_endpoint(
        self, name: str, layers: list[str], base_precision: str = "", model: str = "", actor: str = ""
    ) -> domain.Endpoint:
        base = base_precision or lang.BASE_PRECISION
        errors = lang.endpoint_errors(name, base, layers) + text_errors(model=model, actor=actor)
        if errors:
            raise InvalidArgument(errors)
        with self._uow() as uow:
            endpoint = uow.endpoints.add(
                domain.Endpoint(name=name, base_precision=base, model=model, layers=tuple(layers), created_at=utcnow())
            )
            uow.audit.record(name, "endpoint.create", actor, layers=len(layers), base_precision=base, model=model)
            uow.commit()
        return endpoint

    def delete_endpoint(self, name: str, reason: str, actor: str = "") -> int:
        """Deletes an endpoint with its versions, workers, reports and rollouts; returns the versions deleted."""
        check_name(name, "name")
        if not reason.strip():
            raise InvalidArgument(FieldError("reason", "is required: say why, for the audit log"))
        check_text(reason=reason, actor=actor)
        with self._uow() as uow:
            versions = uow.endpoints.delete(name)
            uow.audit.record(name, "endpoint.delete", actor, reason, policy_versions=versions)
            uow.commit()
        return versions

    def get_endpoint(self, name: str) -> domain.Endpoint:
        check_name(name, "name")
        with self._uow() as uow:
            return uow.endpoints.get(name)

    def list_endpoints(self) -> list[domain.Endpoint]:
        with self._uow() as uow:
            return uow.endpoints.list()

    # --- policies -------------------------------------------------------------------------------

    def create_policy(
        self,
        endpoint: str,
        parent_version: int,
        spec: lang.PolicySpec,
        author: str = "",
        message: str = "",
        artifact: str = "",
    ) -> domain.PolicyVersion:
        check_name(endpoint, "endpoint")
        if parent_version < 0:
            raise InvalidArgument(FieldError("parent_version", f"must be 0 or a version number, got {parent_version}"))
        check_text(author=author, message=message)
        check_artifact(artifact)
        with self._uow() as uow:
            # The row lock queues concurrent writers of one endpoint (Postgres); the conditional
            # update below is the compare-and-swap that decides on every database.
            current = uow.endpoints.get(endpoint, for_update=True)
            _resolve_or_raise(current, spec)
            if parent_version != current.latest_version:
                raise Conflict(
                    f"parent_version {parent_version} is not the latest version of {endpoint!r} "
                    f"(latest is {current.latest_version}); re-read it and apply your change on top"
                )
            version = current.latest_version + 1
            uow.endpoints.advance_latest(endpoint, expected=parent_version, new=version)
            created = uow.policies.add(
                domain.PolicyVersion(
                    endpoint=endpoint,
                    version=version,
                    parent_version=parent_version,
                    spec=spec,
                    author=author,
                    message=message,
                    created_at=utcnow(),
                    artifact=artifact,
                )
            )
            uow.audit.record(endpoint, "policy.create", author, message, version=version, parent_version=parent_version)
            uow.commit()
        return created

    def get_policy(self, endpoint: str, version: int = 0) -> tuple[domain.PolicyVersion, domain.Endpoint]:
        """A version (0 = the latest) and the endpoint it belongs to."""
        check_name(endpoint, "endpoint")
        check_version(version, "version", allow_latest=True)
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint)
            if version == 0:
                if current.latest_version == 0:
                    raise NotFound(f"endpoint {endpoint!r} has no policy yet (create one with `mixprec policy create`)")
                version = current.latest_version
            return uow.policies.get(endpoint, version), current

    def get_resolved_policy(self, endpoint: str, version: int = 0
                            ) -> tuple[domain.PolicyVersion, list[lang.ResolvedLayer]]:
        """A version with the precision of every layer of the endpoint's catalog."""
        policy, current = self.get_policy(endpoint, version)
        return policy, self._resolve(policy.spec, current.layers, current.base_precision).layers

    def list_policies(self, endpoint: str) -> list[domain.PolicyVersion]:
        check_name(endpoint, "endpoint")
        with self._uow() as uow:
            return uow.policies.list(endpoint)

    def diff_policies(self, endpoint: str, from_version: int, to_version: int) -> PolicyDiff:
        check_name(endpoint, "endpoint")
        check_version(from_version, "from_version")
        check_version(to_version, "to_version")
        with self._uow() as uow:
            current = uow.endpoints.get(endpoint)
            old = uow.policies.get(endpoint, from_version)
            new = uow.policies.get(endpoint, to_version)
        old_map, new_map = (self._map(current, policy.spec) for policy in (old, new))
        changes = lang.diff_maps(current.layers, old_map, new_map)
        return PolicyDiff(changes=changes, unchanged=len(current.layers) - len(changes))

    def resolve_policy(self, endpoint: str, spec: lang.PolicySpec) -> lang.Resolution:
        """Dry run: the resolution with every validation error; nothing is written."""
        check_name(endpoint, "endpoint")
        current = self.get_endpoint(endpoint)
        return self._resolve(spec, current.layers, current.base_precision)

    def _map(self, endpoint: domain.Endpoint, spec: lang.PolicySpec) -> dict[str, str]:
        resolution = self._resolve(spec, endpoint.layers, endpoint.base_precision)
        if not resolution.valid:
            raise InvalidArgument(resolution.errors)
        return resolution.precision_map()


def _resolve_or_raise(endpoint: domain.Endpoint, spec: lang.PolicySpec) -> None:
    if not endpoint.layers:
        raise FailedPrecondition(
            f"endpoint {endpoint.name!r} has no layer catalog yet: create it with --layers, "
            "or start a worker so that it reports the catalog"
        )
    lang.resolve_or_raise(spec, endpoint.layers, endpoint.base_precision)
