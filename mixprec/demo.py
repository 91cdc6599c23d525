"""The whole mixprec story in one terminal, on the embedded default (SQLite) with real MiniLM workers:
sweep the model, propose the policy, roll it out step by step under guardrails while traffic flows,
watch an over-aggressive policy get rolled back automatically, then roll back in one call."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack

import grpc

from mixprec.cli import output
from mixprec.cli.fleet_cmds import worker_rows
from mixprec.cli.policy_cmds import rules_proto
from mixprec.localhost import free_port, wait_until
from mixprec.policy import compact_rules
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, inference_pb2_grpc, policy_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import inference_pb2 as ipb
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


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def spawn(workdir: str, name: str, *argv: str) -> subprocess.Popen:
    log = open(os.path.join(workdir, f"{name}.log"), "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, "-m", "mixprec.cli.main", *argv], stdout=log, stderr=log,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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


class Demo:
    def __init__(self, workdir: str, samples: int):
        self.workdir, self.samples = workdir, samples
        self.summary: list[dict] = []

    def show_fleet(self, title: str) -> apb.GetFleetResponse:
        response = self.fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT))
        print(f"--- {title} (active v{response.active_version})")
        output.table(worker_rows(response), ["worker", "applied", "want", "quality (delta vs base)", "req/s",
                                             "p50/p99 ms"])
        return response

    def start(self, stack: ExitStack) -> None:
        step(f"control plane on sqlite:///{self.workdir}/mixprec.db")
        address = f"127.0.0.1:{free_port()}"
        dashboard = f"127.0.0.1:{free_port()}"
        stack.callback(terminate, spawn(self.workdir, "control-plane", "server", "--db",
                                        f"sqlite:///{self.workdir}/mixprec.db", "--listen", address,
                                        "--http-listen", dashboard))
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=60)
        print(f"    dashboard: http://{dashboard}/ (open it to watch the demo live)", flush=True)
        self.address = address
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.fleet = agent_pb2_grpc.FleetServiceStub(channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(channel)
        self.policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, model="minilm", actor="demo"))
        print(f"    endpoint {ENDPOINT} created without a catalog: the first worker will report it")

        step(f"{len(WORKERS)} MiniLM workers: each loads the model once and keeps BF16 and FP8 resident")
        ports = {}
        for worker_id in WORKERS:
            ports[worker_id] = free_port()
            stack.callback(terminate, spawn(
                self.workdir, worker_id, "worker", "--endpoint", ENDPOINT, "--model", "minilm", "--server", address,
                "--worker-id", worker_id, "--state-dir", os.path.join(self.workdir, "state"),
                "--inference-listen", f"127.0.0.1:{ports[worker_id]}", "--eval-samples", str(self.samples),
                "--report-interval", "2"))
        shown = -1

        def connected() -> bool:
            nonlocal shown
            count = sum(w.connected for w in self.fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT)).workers)
            if count != shown:
                print(f"    {count}/{len(WORKERS)} workers connected (loading the model takes a few seconds each)",
                      flush=True)
                shown = count
            return count == len(WORKERS)

        wait_until(connected, 300, "workers to connect")
        self.catalog = list(self.policies.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT)).layers)
        print(f"    all connected; catalog: {len(self.catalog)} layers")

        step("load generator: steady Embed traffic to all workers")
        self.load = LoadGenerator([f"127.0.0.1:{p}" for p in ports.values()])
        self.load.start()
        stack.callback(self.load.stop.set)

    def sweep_and_propose(self) -> int:
        step(f"sensitivity sweep: each layer alone in FP8, budget: {SWEEP_BUDGET} drop of cosine to BF16")
        from worker.engine import HybridEngine
        from worker.models import load_model
        from worker.quality.docstrings import load_pairs
        from worker.sweep import DEFAULT_METRIC, run_sweep
        from worker.sweep_progress import SweepBar
        from worker.sweep_report import write_artifacts

        model = load_model("minilm")
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
        spec = compact_rules(result.precision_map)
        version = self.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=0, rules=rules_proto(spec), author="demo",
            message=f"sensitivity sweep: cosine drop <= {SWEEP_BUDGET}", artifact_json=json.dumps(result.to_json(),
                                                                                                   default=str),
        )).version
        print(f"    proposed as policy v{version} ({len(spec.rules)} rules)")
        self.summary.append({"step": "sweep + propose", "version": f"v{version}", "outcome": f"{chosen}/36 layers FP8",
                             "cosine delta": f"{-result.calibration_drop:+.5f}", "took": f"{result.seconds:.0f}s"})
        return version

    def roll_out(self, version: int, label: str) -> rpb.Rollout:
        step(f"rollout of v{version} ({label}): steps 1 worker, 50%, 100%; guardrail: cosine drop <= "
             f"{GUARDRAIL['cosine_to_base']}")
        started = time.monotonic()
        self.rollouts.StartRollout(rpb.StartRolloutRequest(
            endpoint=ENDPOINT, version=version, actor="demo",
            steps=[rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=50), rpb.RolloutStep(percent=100)],
            guardrails=rpb.Guardrails(max_drop=GUARDRAIL, reports_per_step=1, bake_seconds=2,
                                      step_timeout_seconds=120)))
        seen = None
        while True:
            current = self.rollouts.GetRollout(rpb.GetRolloutRequest(endpoint=ENDPOINT))
            key = (current.state, current.current_step, len(current.new_version_workers))
            if key != seen:
                seen = key
                print(f"    [{rpb.RolloutState.Name(current.state)}] {current.message}")
            if current.state not in (rpb.RUNNING,):
                break
            if time.monotonic() - started > 240:
                raise RuntimeError("the rollout did not finish in 240 s")
            time.sleep(0.5)
        wanted = current.to_version if current.state == rpb.SUCCEEDED else current.from_version
        wait_until(lambda: all(w.applied_version == wanted for w in self.fleet.GetFleet(
            apb.GetFleetRequest(endpoint=ENDPOINT)).workers), 60, "every worker on the outcome")
        time.sleep(2.5)  # one serving window on the outcome
        response = self.show_fleet(f"after the rollout of v{version}")
        quality = [w.last_quality.deltas.get("cosine_to_base") for w in response.workers
                   if w.last_quality.version == version]
        quality += [-c.measured for c in current.last_checks if c.guardrail == "max_drop[cosine_to_base]"]
        self.summary.append({"step": f"rollout v{version} ({label})", "version": f"v{response.active_version}",
                             "outcome": rpb.RolloutState.Name(current.state),
                             "cosine delta": f"{min(quality):+.5f}" if quality else "-",
                             "took": f"{time.monotonic() - started:.0f}s"})
        return current

    def aggressive_policy(self, parent: int) -> int:
        return self.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=parent, author="demo", message="everything per-tensor FP8 (too far)",
            rules=[pb.Rule(match="*", precision="fp8-tensor")])).version

    def one_call_rollback(self) -> None:
        step("incident: `mixprec rollback demo-embedder --to-base --reason ...`, one call, every worker")
        started = time.monotonic()
        rolled = self.fleet.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, reason="demo: incident drill",
                                                         to_base=True, actor="oncall"))
        wait_until(lambda: all(w.applied_version == rolled.active_version for w in self.fleet.GetFleet(
            apb.GetFleetRequest(endpoint=ENDPOINT)).workers), 60, "every worker at base")
        took = time.monotonic() - started
        wait_until(lambda: all(w.last_quality.version == rolled.active_version for w in self.fleet.GetFleet(
            apb.GetFleetRequest(endpoint=ENDPOINT)).workers), 60, "every worker's report at base")
        time.sleep(2.5)
        self.show_fleet("after the rollback")
        self.summary.append({"step": "one-call rollback", "version": f"v{rolled.active_version}",
                             "outcome": f"all base in {took:.1f}s", "cosine delta": "+0.00000", "took": f"{took:.0f}s"})


def run(keep: bool = False, samples: int = 24) -> int:
    workdir = tempfile.mkdtemp(prefix="mixprec-demo-")
    started = time.monotonic()
    demo = Demo(workdir, samples)
    with ExitStack() as stack:
        demo.start(stack)
        proposed = demo.sweep_and_propose()
        first = demo.roll_out(proposed, "the sweep's policy")
        aggressive = demo.aggressive_policy(proposed)
        second = demo.roll_out(aggressive, "over-aggressive")
        demo.one_call_rollback()
        demo.load.stop.set()
        demo.load.join(timeout=30)
        step("audit log (newest first)")
        for entry in demo.fleet.ListAudit(apb.ListAuditRequest(endpoint=ENDPOINT, limit=12)).entries:
            print(f"    {entry.action:<20} {entry.actor:<10} {entry.reason[:90]}")
    print(f"\nsummary ({demo.load.sent} inference requests during the demo, {demo.load.failed} failed, "
          f"{time.monotonic() - started:.0f}s in all):")
    output.table(demo.summary)
    ok = first.state == rpb.SUCCEEDED and second.state == rpb.ROLLED_BACK and demo.load.failed == 0
    if keep:
        print(f"logs, database and sweep outputs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("error: the demo did not go as expected (see above)", file=sys.stderr)
    return 0 if ok else 1
