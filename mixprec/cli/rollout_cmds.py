"""`mixprec rollout plan|start|status|pause|resume|abort|promote|list`."""

from __future__ import annotations

import re
import sys
import time

from mixprec.cli import output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    actor,
    add_request_id_option,
    channel,
    command,
    count,
    group,
    request_id,
    timestamp_text,
    to_dict,
)
from mixprec.cli.endpoint_cmds import stub as policy_stub
from mixprec.cli.fleet_cmds import fleet_stub, worker_rows
from mixprec.cli.policy_cmds import rules_proto
from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import limit_errors, split_by_direction
from mixprec.policy import compact_rules, load_policy_file, stage_maps
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb
from mixprec.v1 import rollout_pb2_grpc

TERMINAL = {rpb.SUCCEEDED, rpb.ROLLED_BACK, rpb.ABORTED}


def register(sub) -> None:
    rollout = group(sub, "rollout", "move an endpoint to a new policy version step by step, with guardrails")

    p = command(rollout, "plan", "write the policy versions that move layer groups to FP8 one stage at a time",
                _plan, description="Resolve MAP.yaml (e.g. a sweep's output) against the endpoint and store one "
                "policy version per stage, each adding the next group (e.g. --stages mlp,attention), chained "
                "on the latest version.")
    p.add_argument("endpoint")
    p.add_argument("-f", "--file", required=True, metavar="MAP.yaml", help="the target policy")
    p.add_argument("--stages", required=True, help="comma-separated groups or globs, e.g. mlp,attention")
    p.add_argument("--author", default=None, help="who wrote it (default: $MIXPREC_ACTOR or your user name)")

    s = command(rollout, "start", "start a progressive rollout of a version", _start,
                description="Move the endpoint from its active version to VERSION in steps; each step waits for "
                "quality reports from new-version workers and checks the guardrails; a breach rolls every worker "
                "back automatically.")
    s.add_argument("endpoint")
    s.add_argument("version", type=count)
    s.add_argument("--steps", default="1,25%,100%", help="worker counts or percentages (default 1,25%%,100%%)")
    s.add_argument("--max-drop", action="append", default=[], metavar="METRIC=X",
                   help="largest drop allowed for a metric that must not drop, e.g. cosine_to_base=0.002 or "
                   "top1_agreement=0.01 (repeatable)")
    s.add_argument("--max-rise", action="append", default=[], metavar="METRIC=X",
                   help="largest rise allowed for a metric that must not rise, e.g. kl_divergence=0.02 or "
                   "perplexity=0.5 (repeatable)")
    s.add_argument("--limit", action="append", default=[], metavar="METRIC=X",
                   help="how much worse a metric may get, on whichever side is worse for it (repeatable)")
    s.add_argument("--min-throughput-ratio", type=float, default=0.0, help="new/old serving throughput floor")
    s.add_argument("--reports", type=count, default=1, help="quality reports needed per step")
    s.add_argument("--bake", type=float, default=10.0, help="seconds a step must stay healthy")
    s.add_argument("--max-failed-checks", type=count, default=0, help="failed checks tolerated before rollback")
    s.add_argument("--step-timeout", type=float, default=300.0, help="seconds to gather reports before pausing")
    add_request_id_option(s)

    st = command(rollout, "status", "show the endpoint's rollout: step, workers, their latest numbers", _status)
    st.add_argument("endpoint")
    st.add_argument("--watch", action="store_true", help="refresh every --interval seconds until the rollout ends")
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes with --watch (default 1)")

    for name, verb in (("pause", "pause"), ("resume", "resume"),
                       ("abort", "abort (every worker returns to the old version)"),
                       ("promote", "promote (skip the remaining steps: the new version everywhere now)")):
        a = command(rollout, name, f"{verb} the endpoint's rollout", _action(name))
        a.add_argument("endpoint")
        a.add_argument("--reason", default="", help="why, for the audit log")
        add_request_id_option(a)

    ls = command(rollout, "list", "list every rollout of an endpoint", _list)
    ls.add_argument("endpoint")


def rollout_stub(args) -> rollout_pb2_grpc.RolloutServiceStub:
    return rollout_pb2_grpc.RolloutServiceStub(channel(args))


def parse_steps(text: str) -> list[rpb.RolloutStep]:
    steps = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        if re.fullmatch(r"\d+", part) and int(part) > 0:
            steps.append(rpb.RolloutStep(workers=int(part)))
        elif re.fullmatch(r"\d+(\.\d+)?%", part):
            steps.append(rpb.RolloutStep(percent=float(part[:-1])))
        else:
            raise InvalidArgument(FieldError(f"--steps[{i}]", f"{part!r} is neither a worker count nor a percentage"))
    return steps


def parse_max_drop(items: list[str], option: str = "--max-drop") -> dict[str, float]:
    limits = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            limits[metric.strip()] = float(value)
        except ValueError:
            raise InvalidArgument(FieldError(option, f"{item!r} is not METRIC=NUMBER")) from None
        if not sep or not metric.strip():
            raise InvalidArgument(FieldError(option, f"{item!r} is not METRIC=NUMBER"))
    return limits


def parse_quality_limits(args) -> tuple[dict[str, float], dict[str, float]]:
    """--max-drop, --max-rise and --limit -> (max_drop, max_rise); a limit on a metric's better side is refused."""
    drops, rises = split_by_direction(parse_max_drop(args.limit, "--limit"))
    drops.update(parse_max_drop(args.max_drop))
    rises.update(parse_max_drop(args.max_rise, "--max-rise"))
    errors = limit_errors(parse_max_drop(args.max_drop), "drop", "--max-{word} {metric}") + \
        limit_errors(parse_max_drop(args.max_rise, "--max-rise"), "rise", "--max-{word} {metric}")
    if errors:
        raise InvalidArgument(errors)
    return drops, rises


def _plan(args) -> int:
    spec = load_policy_file(args.file)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages:
        raise InvalidArgument(FieldError("--stages", "name at least one group, e.g. mlp,attention"))
    policies = policy_stub(args)
    endpoint = policies.GetEndpoint(pb.GetEndpointRequest(name=args.endpoint), timeout=RPC_TIMEOUT_S)
    resolved = policies.ResolvePolicy(
        pb.ResolvePolicyRequest(endpoint=args.endpoint, rules=rules_proto(spec), kv_cache=spec.kv_cache),
        timeout=RPC_TIMEOUT_S,
    )
    if not resolved.valid:
        raise InvalidArgument([FieldError(e.field, e.message) for e in resolved.errors])
    target = {r.layer: r.precision for r in resolved.resolved}
    parent = endpoint.latest_version
    created = []
    for stage, stage_map in zip(stages, stage_maps(target, stages, endpoint.base_precision), strict=True):
        version = policies.CreatePolicy(
            pb.CreatePolicyRequest(
                endpoint=args.endpoint, parent_version=parent,
                rules=rules_proto(compact_rules(stage_map, endpoint.base_precision)),
                author=actor(args), message=f"stage {len(created) + 1}/{len(stages)}: {stage} from {args.file}",
            ),
            timeout=RPC_TIMEOUT_S,
        )
        parent = version.version
        fp8 = sum(p != endpoint.base_precision for p in stage_map.values())
        created.append({"stage": stage, "version": version.version, "layers off base": fp8, "rules": len(version.rules)})
    output.emit(args, created)
    if args.output != "json":
        print(f"roll them out in order: mixprec rollout start {args.endpoint} {created[0]['version']} ...")
    return 0


def _start(args) -> int:
    max_drop, max_rise = parse_quality_limits(args)
    rollout = rollout_stub(args).StartRollout(
        rpb.StartRolloutRequest(
            endpoint=args.endpoint, version=args.version, steps=parse_steps(args.steps), actor=actor(args),
            request_id=request_id(args),
            guardrails=rpb.Guardrails(
                max_drop=max_drop, max_rise=max_rise, min_throughput_ratio=args.min_throughput_ratio,
                reports_per_step=args.reports, bake_seconds=args.bake, max_failed_checks=args.max_failed_checks,
                step_timeout_seconds=args.step_timeout,
            ),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(rollout))
    else:
        print(f"rollout {rollout.id} started: {args.endpoint} v{rollout.from_version} -> v{rollout.to_version}, "
              f"steps {args.steps}; follow it with `mixprec rollout status {args.endpoint} --watch`")
    return 0


def describe(rollout: rpb.Rollout) -> str:
    steps = ",".join(str(s.workers) if s.HasField("workers") else f"{s.percent:g}%" for s in rollout.steps)
    return (f"rollout {rollout.id} of {rollout.endpoint}: v{rollout.from_version} -> v{rollout.to_version} "
            f"[{rpb.RolloutState.Name(rollout.state)}] step {rollout.current_step + 1}/{len(rollout.steps)} "
            f"({steps}); failed checks {rollout.failed_checks}/{rollout.guardrails.max_failed_checks} allowed\n"
            f"  {rollout.message}")


def _show(args) -> rpb.Rollout:
    rollout = rollout_stub(args).GetRollout(rpb.GetRolloutRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    fleet = fleet_stub(args).GetFleet(apb.GetFleetRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    if args.output == "json":
        output.as_json({"rollout": to_dict(rollout), "workers": [to_dict(w) for w in fleet.workers]})
        return rollout
    print(time.strftime("%H:%M:%S"), describe(rollout))
    rows = worker_rows(fleet)
    for row in rows:
        row["side"] = "new" if row["worker"] in rollout.new_version_workers else "old"
    output.table(rows, ["worker", "side", "connected", "applied", "want", "quality (delta vs base)", "req/s",
                        "p50/p99 ms"])
    if rollout.last_checks:
        print("  last checks: " + "; ".join(
            f"{c.worker_id} {c.guardrail}={c.measured:.5g} ({'ok' if c.passed else 'BROKEN'})"
            for c in rollout.last_checks[-6:]))
    return rollout


def _status(args) -> int:
    while True:
        rollout = _show(args)
        if not args.watch or rollout.state in TERMINAL:
            return 0
        sys.stdout.flush()
        time.sleep(args.interval)
        print()


def _action(name: str):
    method = {"pause": "PauseRollout", "resume": "ResumeRollout", "abort": "AbortRollout",
              "promote": "PromoteRollout"}[name]

    def run(args) -> int:
        rollout = getattr(rollout_stub(args), method)(
            rpb.RolloutActionRequest(endpoint=args.endpoint, actor=actor(args), reason=args.reason,
                                     request_id=request_id(args)),
            timeout=RPC_TIMEOUT_S,
        )
        if args.output == "json":
            output.as_json(to_dict(rollout))
        else:
            print(describe(rollout))
        return 0

    return run


def _list(args) -> int:
    response = rollout_stub(args).ListRollouts(rpb.ListRolloutsRequest(endpoint=args.endpoint), timeout=RPC_TIMEOUT_S)
    rows = [
        {"id": r.id, "from": f"v{r.from_version}", "to": f"v{r.to_version}", "state": rpb.RolloutState.Name(r.state),
         "step": f"{r.current_step + 1}/{len(r.steps)}", "started": timestamp_text(r.create_time),
         "message": r.message[:80]}
        for r in response.rollouts
    ]
    output.emit(args, [to_dict(r) for r in response.rollouts], rows=rows)
    return 0


