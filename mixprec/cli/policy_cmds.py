"""`mixprec policy create|show|history|diff|validate`."""

from __future__ import annotations

import sys
from collections import Counter

from mixprec.cli import output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    actor,
    add_request_id_option,
    command,
    count,
    group,
    request_id,
    timestamp_text,
    to_dict,
)
from mixprec.cli.endpoint_cmds import stub
from mixprec.cli.exits import INVALID_INPUT
from mixprec.policy import PolicySpec, load_policy_file
from mixprec.v1 import policy_pb2 as pb


def register(sub) -> None:
    policy = group(sub, "policy", "write and inspect versioned precision policies")

    c = command(policy, "create", "store a policy file as the endpoint's next version", _create,
                description="Store POLICY.yaml as a new immutable version. --parent names the version you "
                "edited (0 for the first): if someone wrote a newer one meanwhile, nothing is stored (exit 4).")
    c.add_argument("endpoint")
    c.add_argument("-f", "--file", required=True, metavar="POLICY.yaml",
                   help="YAML with `rules:` [{match: GLOB, precision: NAME}] and optional `kv_cache:`")
    c.add_argument("--parent", type=count, required=True, metavar="N", help="the version this edit starts from")
    c.add_argument("-m", "--message", default="", help="why this version exists")
    c.add_argument("--author", default=None, help="who wrote it (default: $MIXPREC_ACTOR or your user name)")
    add_request_id_option(c)

    s = command(policy, "show", "show a policy version (default: the latest)", _show)
    s.add_argument("endpoint")
    s.add_argument("version", nargs="?", type=count, default=0)
    s.add_argument("--resolved", action="store_true", help="also show the precision of every layer")

    h = command(policy, "history", "list every version of an endpoint's policy", _history)
    h.add_argument("endpoint")

    d = command(policy, "diff", "show the layers whose precision differs between two versions", _diff)
    d.add_argument("endpoint")
    d.add_argument("v1", type=count)
    d.add_argument("v2", type=count)

    v = command(policy, "validate", "check a policy file against an endpoint's catalog (nothing is stored)",
                _validate)
    v.add_argument("endpoint")
    v.add_argument("-f", "--file", required=True, metavar="POLICY.yaml", help="the policy to check")


def rules_proto(spec: PolicySpec) -> list[pb.Rule]:
    return [pb.Rule(match=r.match, precision=r.precision) for r in spec.rules]


def _create(args) -> int:
    spec = load_policy_file(args.file)
    created = stub(args).CreatePolicy(
        pb.CreatePolicyRequest(
            endpoint=args.endpoint,
            parent_version=args.parent,
            rules=rules_proto(spec),
            kv_cache=spec.kv_cache,
            author=actor(args),
            message=args.message,
            request_id=request_id(args),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(created))
    else:
        print(f"created {created.endpoint} policy version {created.version} (parent {created.parent_version})")
    return 0


def _summary(resolved) -> str:
    counts = Counter(r.precision for r in resolved)
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))


def _show(args) -> int:
    v = stub(args).GetPolicy(
        pb.GetPolicyRequest(endpoint=args.endpoint, version=args.version, resolved=args.resolved),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(v))
        return 0
    output.key_values([
        ("endpoint", v.endpoint),
        ("version", v.version),
        ("parent", v.parent_version),
        ("author", v.author),
        ("created", timestamp_text(v.create_time)),
        ("message", v.message or "-"),
        ("kv_cache", v.kv_cache or "-"),
    ])
    print("rules (last match wins):")
    output.table([{"#": i, "match": r.match, "precision": r.precision} for i, r in enumerate(v.rules, 1)])
    if args.resolved:
        print(f"precision map ({_summary(v.resolved)}):")
        output.table([
            {"layer": r.layer, "precision": r.precision, "decided by": _decided_by(r.rule)} for r in v.resolved
        ])
    return 0


def _decided_by(rule: int) -> str:
    return {0: "base", -1: "kv_cache"}.get(rule, f"rule {rule}")


def _history(args) -> int:
    response = stub(args).ListPolicies(pb.ListPoliciesRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    rows = [
        {
            "version": v.version,
            "parent": v.parent_version,
            "rules": len(v.rules),
            "author": v.author,
            "created": timestamp_text(v.create_time),
            "message": v.message,
        }
        for v in response.versions
    ]
    output.emit(args, [to_dict(v) for v in response.versions], rows=rows)
    return 0


def _diff(args) -> int:
    response = stub(args).DiffPolicies(
        pb.DiffPoliciesRequest(endpoint=args.endpoint, from_version=args.v1, to_version=args.v2),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(response))
        return 0
    output.table([
        {"layer": c.layer, f"v{args.v1}": c.from_precision, f"v{args.v2}": c.to_precision} for c in response.changes
    ])
    print(f"{len(response.changes)} layers change, {response.unchanged} keep their precision")
    return 0


def _validate(args) -> int:
    spec = load_policy_file(args.file)
    response = stub(args).ResolvePolicy(
        pb.ResolvePolicyRequest(endpoint=args.endpoint, rules=rules_proto(spec), kv_cache=spec.kv_cache),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(response))
    elif response.valid:
        print(f"valid: {_summary(response.resolved)}")
    for error in response.errors:
        print(f"error: {error.field}: {error.message}", file=sys.stderr)
    return 0 if response.valid else INVALID_INPUT
