"""The end-to-end story on the embedded default: a control plane on SQLite, real MiniLM workers,
a policy activated while traffic flows, quality and throughput reports, and a one-call rollback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

import grpc

from mixprec.cli import output
from mixprec.cli.fleet_cmds import worker_rows
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, inference_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import policy_pb2 as pb

ENDPOINT = "demo-embedder"
WORKERS = ("worker-a", "worker-b")
QUERIES = [
    "how do I parse a date string", "read a file line by line", "sort a dictionary by value",
    "start a thread pool", "compress bytes with zlib", "join paths on any platform",
]


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Processes:
    workdir: str
    server: str = ""

    def spawn(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, "-m", "mixprec.cli.main", *argv], stdout=log, stderr=log,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))


class LoadGenerator(threading.Thread):
    """Steady Embed traffic to every worker, so serving reports carry real numbers."""

    def __init__(self, addresses: list[str]):
        super().__init__(daemon=True)
        self.addresses = addresses
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0

    def run(self) -> None:
        stubs = [inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(a)) for a in self.addresses]
        i = 0
        while not self.stop.is_set():
            stub = stubs[i % len(stubs)]
            try:
                stub.Embed(ipb.EmbedRequest(texts=QUERIES[i % len(QUERIES):] + QUERIES[:2]), timeout=30)
                self.sent += 1
            except grpc.RpcError:
                self.failed += 1
            i += 1
            time.sleep(0.05)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def fleet_view(fleet, title: str) -> apb.GetFleetResponse:
    response = fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT))
    print(f"--- fleet: {title} (active v{response.active_version})")
    rows = worker_rows(response)
    output.table(rows, ["worker", "connected", "applied", "quality (delta vs base)", "req/s", "p50/p99 ms", "kernel"])
    return response


def all_on(fleet, version: int, with_quality: bool = True):
    def check():
        workers = fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT)).workers
        return len(workers) == len(WORKERS) and all(
            w.connected and w.applied_version == version
            and (not with_quality or w.last_quality.version == version and w.last_quality.deltas)
            for w in workers
        )

    return check


def run(keep: bool = False, samples: int = 48) -> int:
    workdir = tempfile.mkdtemp(prefix="mixprec-demo-")
    procs = Processes(workdir)
    summary: list[dict] = []
    with ExitStack() as stack:
        step(f"starting the control plane on sqlite:///{workdir}/mixprec.db")
        address = f"127.0.0.1:{free_port()}"
        server = procs.spawn("control-plane", "server", "--db", f"sqlite:///{workdir}/mixprec.db", "--listen", address)
        stack.callback(_terminate, server)
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=60)
        policies = policy_pb2_grpc.PolicyServiceStub(channel)
        fleet = agent_pb2_grpc.FleetServiceStub(channel)

        step(f"creating endpoint {ENDPOINT}; its layer catalog will come from the first worker")
        policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, model="minilm", actor="demo"))

        step(f"starting {len(WORKERS)} MiniLM workers (each loads the model once, keeps BF16 and FP8 resident)")
        inference_ports = {}
        for worker_id in WORKERS:
            inference_ports[worker_id] = free_port()
            proc = procs.spawn(worker_id, "worker", "--endpoint", ENDPOINT, "--model", "minilm", "--server", address,
                               "--worker-id", worker_id, "--state-dir", os.path.join(workdir, "state"),
                               "--inference-listen", f"127.0.0.1:{inference_ports[worker_id]}",
                               "--eval-samples", str(samples), "--report-interval", "2")
            stack.callback(_terminate, proc)
        wait_until(lambda: len([w for w in fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT)).workers
                                if w.connected]) == len(WORKERS), 240, "workers to connect")
        catalog = policies.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT)).layers
        print(f"    catalog learnt: {len(catalog)} layers ({catalog[0]} ... {catalog[-1]})")

        step("starting a load generator against both workers")
        load = LoadGenerator([f"127.0.0.1:{p}" for p in inference_ports.values()])
        load.start()
        stack.callback(load.stop.set)

        step("writing policy v1 (MLP layers to FP8) and v2 (every layer to FP8)")
        policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=0, author="demo", message="MLP up/down to FP8",
            rules=[pb.Rule(match="layers.*.mlp.*", precision="fp8")]))
        policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=1, author="demo", message="every linear layer to FP8",
            rules=[pb.Rule(match="layers.*", precision="fp8")]))

        for version, why in ((1, "MLP first"), (2, "attention too")):
            step(f"activating v{version} ({why}); workers switch between batches and report shadow-eval deltas")
            started = time.monotonic()
            fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=version, actor="demo", reason=why))
            wait_until(all_on(fleet, version), 180, f"every worker on v{version} with a quality report")
            response = fleet_view(fleet, f"after activating v{version}")
            summary.append(_summary_row(f"activate v{version}", response, time.monotonic() - started))

        step("incident drill: `mixprec rollback demo-embedder --reason ...` (one call, no version number)")
        started = time.monotonic()
        rolled = fleet.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, reason="demo: quality alert", actor="oncall"))
        print(f"    rolled back v{rolled.previous_version} -> v{rolled.active_version}")
        wait_until(all_on(fleet, rolled.active_version), 120, "every worker back, with its quality report")
        time.sleep(2.5)  # one more serving report window on the restored version
        response = fleet_view(fleet, "after the rollback")
        summary.append(_summary_row(f"rollback to v{rolled.active_version}", response, time.monotonic() - started))

        load.stop.set()
        load.join(timeout=30)
        step("audit log")
        for entry in fleet.ListAudit(apb.ListAuditRequest(endpoint=ENDPOINT, limit=10)).entries:
            print(f"    {entry.action:<16} {entry.actor:<8} {entry.reason}")
        print()
        print(f"summary ({load.sent} inference requests served during the demo, {load.failed} failed):")
        output.table(summary)
        if load.failed:
            print("error: some inference requests failed during policy changes", file=sys.stderr)
            return 1
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs and database kept in {workdir}")
    return 0


def _summary_row(action: str, response: apb.GetFleetResponse, seconds: float) -> dict:
    workers = response.workers
    cosines = [w.last_quality.deltas.get("cosine_to_base") for w in workers if w.last_quality.deltas]
    mrr = [w.last_quality.deltas.get("mrr") for w in workers if w.last_quality.deltas]
    return {
        "step": action,
        "active": f"v{response.active_version}",
        "workers on it": f"{sum(w.applied_version == response.active_version for w in workers)}/{len(workers)}",
        "cosine delta": f"{min(cosines):+.5f}" if cosines and None not in cosines else "-",
        "mrr delta": f"{mrr[0]:+.4f}" if mrr and None not in mrr else "-",
        "converged in": f"{seconds:.1f}s",
    }


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
