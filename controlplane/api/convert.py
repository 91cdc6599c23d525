"""Conversions between domain values and mixprec.v1 messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from controlplane import domain
from mixprec import policy as lang
from mixprec.v1 import policy_pb2 as pb


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def spec_from_proto(rules, kv_cache: str) -> lang.PolicySpec:
    return lang.PolicySpec(tuple(lang.Rule(r.match, r.precision) for r in rules), kv_cache)


def endpoint_to_proto(endpoint: domain.Endpoint, with_layers: bool = True) -> pb.Endpoint:
    return pb.Endpoint(
        name=endpoint.name,
        base_precision=endpoint.base_precision,
        model=endpoint.model,
        layers=list(endpoint.layers) if with_layers else [],
        layer_count=len(endpoint.layers),
        create_time=timestamp(endpoint.created_at),
        latest_version=endpoint.latest_version,
        active_version=endpoint.active_version,
    )


def resolved_to_proto(layers: list[lang.ResolvedLayer]) -> list[pb.LayerPrecision]:
    return [pb.LayerPrecision(layer=r.layer, precision=r.precision, rule=r.rule) for r in layers]


def policy_to_proto(policy: domain.PolicyVersion, resolved: list[lang.ResolvedLayer] | None = None,
                    with_artifact: bool = False) -> pb.PolicyVersion:
    return pb.PolicyVersion(
        endpoint=policy.endpoint,
        version=policy.version,
        parent_version=policy.parent_version,
        rules=[pb.Rule(match=r.match, precision=r.precision) for r in policy.spec.rules],
        kv_cache=policy.spec.kv_cache,
        author=policy.author,
        message=policy.message,
        create_time=timestamp(policy.created_at),
        resolved=resolved_to_proto(resolved or []),
        has_artifact=bool(policy.artifact),
        artifact_json=policy.artifact if with_artifact else "",
    )
