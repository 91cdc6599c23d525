"""Does an apply ever wait for the worker's other work? Apply latency on an idle worker against a busy one.

One `mixprec server` (SQLite) and one real MiniLM worker, both processes of their own. Each sample
times one policy change from the start of the `Activate`/`Rollback` call until the worker's own
`WorkerInfo` reports the new version (polled every 2 ms over one open channel), so it covers the push,
the apply and nothing else:

* idle: the worker has finished evaluating the version it runs, and no request is in flight;
* busy: the worker is in the middle of the shadow evaluation of the version it runs (a long one: 96
  pairs), while a client keeps it serving `Embed` requests back to back;
* rollback mid-evaluation: `mixprec rollback` (to base) in the same busy state, the incident case.

Goals (issue: the fleet loop under stress): busy within 2x idle; a rollback mid-evaluation applied in
under 0.5 s. The numbers are wall-clock times on whatever machine runs this; the ratio is the one to read.

Usage: python benchmarks/apply_latency.py [--samples 6]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import grpc

from mixprec.localhost import free_port, wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, inference_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import policy_pb2 as pb

ENDPOINT = "embedder"
EVAL_SAMPLES = 96  # pairs per shadow evaluation: long enough to be caught in the middle
TEXTS = ["how do I read a file line by line", "sort a dictionary by its values", "merge two sorted lists"]


def progress(message: str) -> None:
    print(f"[apply_latency] {message}", file=sys.stderr, flush=True)


def launch(argv: list[str], log: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "mixprec.cli.main", *argv], stdout=out, stderr=out, env=env)


class Bench:
    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.server = f"127.0.0.1:{free_port()}"
        self.worker = f"127.0.0.1:{free_port()}"
        self.worker_log = workdir / "worker.log"
        self.children = [launch(["server", "--db", f"sqlite:///{workdir / 'cp.db'}", "--listen", self.server],
                                workdir / "server.log")]
        control = grpc.insecure_channel(self.server)
        self.policies = policy_pb2_grpc.PolicyServiceStub(control)
        self.fleet = agent_pb2_grpc.FleetServiceStub(control)
        wait_until(self._server_up, 60, "the control plane to serve")
        self.policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, model="minilm"))
        self.children.append(launch([
            "worker", "--endpoint", ENDPOINT, "--model", "minilm", "--server", self.server, "--worker-id", "w1",
            "--state-dir", str(workdir / "state"), "--inference-listen", self.worker,
            "--eval-samples", str(EVAL_SAMPLES), "--report-interval", "1"], self.worker_log))
        self.inference = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(self.worker))
        wait_until(self._worker_up, 300, "the worker to load MiniLM and connect")
        self._maps = ((block, group) for block in range(6) for group in range(6))

    def new_version(self) -> int:
        """A version with a map not measured before (a worker keeps the numbers of a map it has measured)."""
        block, other = next(self._maps)
        latest = self.policies.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT)).latest_version
        rules = [pb.Rule(match=f"layers.{block}.*", precision="fp8"),
                 pb.Rule(match=f"layers.{other}.mlp.*", precision="fp8")]
        return self.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=ENDPOINT, parent_version=latest,
                                                                 rules=rules)).version

    def _server_up(self) -> bool:
        try:
            self.policies.ListEndpoints(pb.ListEndpointsRequest(), timeout=1)
            return True
        except grpc.RpcError:
            return False

    def _worker_up(self) -> bool:
        try:
            return self.fleet.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT), timeout=1).workers[0].connected
        except (grpc.RpcError, IndexError):
            return False

    def running(self) -> int:
        return self.inference.WorkerInfo(ipb.WorkerInfoRequest(), timeout=5).policy_version

    def log(self) -> str:
        return self.worker_log.read_text()

    def timed(self, change, version_after) -> float:
        """Seconds from the start of `change()` until the worker runs the version it names."""
        start = time.perf_counter()
        target = version_after(change())
        while self.running() != target:
            time.sleep(0.002)
        return time.perf_counter() - start

    def activate(self, version: int):
        return lambda: self.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=version, reason="bench"))

    def rollback_to_base(self):
        return lambda: self.fleet.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, to_base=True, reason="bench"))

    def mark(self) -> int:
        """Where the worker's log ends now: later waits read only what is written after it."""
        return len(self.log())

    def settle(self, version: int, since: int) -> None:
        """Until the worker has evaluated `version` (its quality line is logged): idle from then on."""
        wait_until(lambda: f"v{version} quality:" in self.log()[since:], 600, f"the evaluation of v{version}")

    def mid_evaluation(self, version: int, since: int, into: float = 0.5) -> None:
        """Until the worker has been evaluating `version` for `into` seconds."""
        wait_until(lambda: f"evaluating v{version}" in self.log()[since:], 120,
                   f"the evaluation of v{version} to start", poll=0.005)
        time.sleep(into)
        if f"v{version} quality:" in self.log()[since:]:
            raise RuntimeError(f"the evaluation of v{version} ended before the change: raise EVAL_SAMPLES")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


class Traffic:
    """A client sending Embed requests back to back, so a busy worker is also serving."""

    def __init__(self, address: str):
        self._stub = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(address))
        self._stop = threading.Event()
        self.served = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stub.Embed(ipb.EmbedRequest(texts=TEXTS), timeout=60)
            self.served += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def row(label: str, samples: list[float], note: str = "") -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"{label:<34} {len(ms):>7} {statistics.median(ms):>9.1f} {ms[-1]:>9.1f}  {note}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6, help="changes timed per mode (default 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mixprec-apply-") as tmp:
        bench = Bench(pathlib.Path(tmp))
        idle, busy, rollbacks = [], [], []
        traffic = None
        activated = lambda r: r.active_version  # noqa: E731 - the version a change leaves active
        try:
            for i in range(args.samples):
                progress(f"sample {i + 1}/{args.samples}: apply on an idle worker")
                version = bench.new_version()
                since = bench.mark()
                idle.append(bench.timed(bench.activate(version), activated))
                bench.settle(version, since)
            bench.timed(bench.rollback_to_base(), activated)
            traffic = Traffic(bench.worker)
            for i in range(args.samples):
                progress(f"sample {i + 1}/{args.samples}: apply, then a rollback, each mid-evaluation and serving")
                first, second = bench.new_version(), bench.new_version()
                since = bench.mark()
                bench.timed(bench.activate(first), activated)
                bench.mid_evaluation(first, since)
                since = bench.mark()
                busy.append(bench.timed(bench.activate(second), activated))
                bench.mid_evaluation(second, since)
                rollbacks.append(bench.timed(bench.rollback_to_base(), activated))
            served = traffic.served
        finally:
            if traffic is not None:
                traffic.stop()
            bench.stop()
    ratio = statistics.median(busy) / statistics.median(idle)
    print("one MiniLM worker, CPU, evaluation of 96 pairs per applied version")
    print(f"{'mode':<34} {'changes':>7} {'p50 ms':>9} {'max ms':>9}  note")
    print(row("apply, idle worker", idle))
    print(row("apply, mid-evaluation + traffic", busy, f"{served} Embed calls served meanwhile"))
    print(row("rollback, mid-evaluation + traffic", rollbacks))
    print(f"apply on a busy worker: p50 {ratio:.2f}x idle (goal <= 2x); rollback mid-evaluation applied in "
          f"at most {max(rollbacks) * 1000:.0f} ms (goal < 500 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
