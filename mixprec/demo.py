"""The whole mixprec story in one terminal, on the embedded default (SQLite) with real MiniLM workers:
sweep the model, propose the policy, roll it out step by step under guardrails while traffic flows,
watch an over-aggressive policy get rolled back automatically, then roll back in one call."""

from __future__ import annotations

import os
import pathlib
import sys
import threading
import time
from contextlib import ExitStack

import grpc

from mixprec.demo_story import Story, step, tell
from mixprec.localhost import wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

ENDPOINT = "demo-embedder"
WORKERS = ("worker-a", "worker-b", "worker-c")
GUARDRAIL = {"cosine_to_base": 0.001}  # the largest drop of agreement with BF16 the endpoint accepts
SWEEP_BUDGET = 0.0005
QUERIES = [
    "how do I parse a date string", "read a file line by line", "sort a dictionary by value",
    "start a thread pool", "compress bytes with zlib", "join paths on any platform",
]


class LoadGenerator(threading.Thread):
    """Steady Embed traffic to every worker; any failed request fails the demo."""

    def __init__(self, addresses: list[str]):
        super().__init__(daemon=True)
        self.addresses, self.stop, self.sent, self.failed = addresses, threading.Event(), 0, 0

    def run(self) -> None:
        stubs = [inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(a)) for a in self.addresses]
        i = 0
        while not self.stop.is_set():
            try:
                stubs[i % len(stubs)].Embed(ipb.EmbedRequest(texts=QUERIES[i % 6:] + QUERIES[:2]), timeout=30)
                self.sent += 1
            except grpc.RpcError:
                self.failed += 1
            i += 1
            time.sleep(0.05)


class Demo(Story):
    endpoint = ENDPOINT
    model = "minilm"
    workers = WORKERS
    fleet_columns = ["worker", "applied", "want", "quality (delta vs base)", "req/s", "p50/p99 ms"]

    def start(self, stack: ExitStack) -> None:
        self.start_control_plane(stack, with_dashboard=True)
        print(f"    endpoint {ENDPOINT} created without a catalog: the first worker will report it")
        step(f"{len(WORKERS)} MiniLM workers: each loads the model once and keeps BF16 and FP8 resident")
        addresses = self.start_workers(stack, 300, "loading the model takes a few seconds each")
        self.catalog = list(self.policies.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT)).layers)
        print(f"    all connected; catalog: {len(self.catalog)} layers")

        step("load generator: steady Embed traffic to all workers")
        self.load = LoadGenerator(addresses)
        self.load.start()
        stack.callback(self.load.stop.set)

    def sweep_and_propose(self) -> int:
        step(f"sensitivity sweep: each layer alone in FP8, budget: {SWEEP_BUDGET} drop of cosine to BF16")
        from worker.engine import HybridEngine
        from worker.quality.docstrings import load_pairs
        from worker.sweep import DEFAULT_METRIC, run_sweep
        from worker.sweep_progress import SweepBar
        from worker.sweep_report import write_artifacts

        model = self.load_model()
        engine = HybridEngine(model.module, model.layer_map)
        result = run_sweep(model, engine, load_pairs(16), max_drop=SWEEP_BUDGET,
                           progress=SweepBar(DEFAULT_METRIC, sys.stdout, indent="    "))
        policy_file = os.path.join(self.workdir, "sweep.yaml")
        write_artifacts(result, pathlib.Path(policy_file))
        chosen = sum(p != "bf16" for p in result.precision_map.values())
        ranked = sorted(result.units, key=lambda u: u.drop)
        print(f"    most tolerant: {', '.join(u.name for u in ranked[:3])}")
        print(f"    most sensitive: {', '.join(u.name for u in ranked[-3:])}")
        print(f"    chosen: {chosen} of {len(result.units)} layers in FP8; combined drop measured "
              f"{result.calibration_drop:.5f} (chart: {policy_file[:-5]}.png)")
        version, rules = self.propose(result.precision_map, f"sensitivity sweep: cosine drop <= {SWEEP_BUDGET}",
                                      result.to_json())
        print(f"    proposed as policy v{version} ({rules} rules)")
        self.summary.append({"step": "sweep + propose", "version": f"v{version}", "outcome": f"{chosen}/36 layers FP8",
                             "cosine delta": f"{-result.calibration_drop:+.5f}", "took": f"{result.seconds:.0f}s"})
        return version

    def roll_out(self, version: int, label: str) -> rpb.Rollout:
        step(f"rollout of v{version} ({label}): steps 1 worker, 50%, 100%; guardrail: cosine drop <= "
             f"{GUARDRAIL['cosine_to_base']}")
        current, _, took = self.watch_rollout(
            version, [rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=50), rpb.RolloutStep(percent=100)],
            rpb.Guardrails(max_drop=GUARDRAIL, reports_per_step=1, bake_seconds=2, step_timeout_seconds=120),
            limit=240, poll=0.5, settle_timeout=60)
        time.sleep(2.5)  # one serving window on the outcome
        response = self.show_fleet(f"after the rollout of v{version}")
        quality = [w.last_quality.deltas.get("cosine_to_base") for w in response.workers
                   if w.last_quality.version == version]
        quality += [-c.measured for c in current.last_checks if c.guardrail == "max_drop[cosine_to_base]"]
        self.summary.append({"step": f"rollout v{version} ({label})", "version": f"v{response.active_version}",
                             "outcome": rpb.RolloutState.Name(current.state),
                             "cosine delta": f"{min(quality):+.5f}" if quality else "-", "took": f"{took:.0f}s"})
        return current

    def too_far(self, parent: int) -> tuple[int, str]:
        return self.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=parent, author="demo", message="everything per-tensor FP8 (too far)",
            rules=[pb.Rule(match="*", precision="fp8-tensor")])).version, "over-aggressive"

    def one_call_rollback(self) -> None:
        rolled, took = self.rollback_to_base(60)
        wait_until(lambda: all(w.last_quality.version == rolled.active_version for w in self.fleet_now().workers),
                   60, "every worker's report at base")
        time.sleep(2.5)
        self.show_fleet("after the rollback")
        self.summary.append({"step": "one-call rollback", "version": f"v{rolled.active_version}",
                             "outcome": f"all base in {took:.1f}s", "cosine delta": "+0.00000", "took": f"{took:.0f}s"})


    def stop_traffic(self) -> tuple[bool, str]:
        self.load.stop.set()
        self.load.join(timeout=30)
        return self.load.failed == 0, f"{self.load.sent} inference requests during the demo, {self.load.failed} failed"

    def epilogue(self) -> None:
        step("audit log (newest first)")
        for entry in self.fleet.ListAudit(apb.ListAuditRequest(endpoint=ENDPOINT, limit=12)).entries:
            print(f"    {entry.action:<20} {entry.actor:<10} {entry.reason[:90]}")


def run(keep: bool = False, samples: int = 24, device: str = "auto", dtype: str = "auto") -> int:
    return tell(Demo, samples, keep, "mixprec-demo-", device, dtype)
