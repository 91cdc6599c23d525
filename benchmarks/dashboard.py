"""How soon a rollback made on the dashboard shows on it: action -> agents' ACKs -> the page's fleet table.

Starts `mixprec server --http-listen` on a temporary SQLite file and N light agents (no torch; the
real protocol through worker.sync.SyncLoop). A client logs nothing in (auth is off on loopback), keeps
the endpoint page's event stream open as a browser does, and rolls back between two versions through
the dashboard's form action, R times. For each it measures the time from sending the action to
(1) the last agent applying the new version and (2) the stream delivering a fleet table that shows
every worker on it. Beside it, the same rollbacks through the gRPC API (`Rollback`) to the last ACK.

Usage: python benchmarks/dashboard.py [--agents 20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import grpc

from mixprec.localhost import free_port
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from worker.sync import AgentIdentity, Backoff, SyncLoop

ENDPOINT = "bench"
LAYERS = [f"layers.{i}.{g}" for i in range(6) for g in
          ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.up_proj",
           "mlp.down_proj")]
APPLIED = re.compile(r'class="applied"><span class="version">v(\d+)</span>')


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Page:
    """The endpoint page as a browser holds it: a session cookie, its CSRF token, its event stream."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        html = self.opener.open(f"{base}/endpoints/{ENDPOINT}", timeout=10).read().decode()
        self.csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
        self.shown: list[tuple[float, set[int]]] = []  # when a fleet table arrived, and the versions in it
        self.lock = threading.Lock()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        with self.opener.open(f"{self.base}/endpoints/{ENDPOINT}/events", timeout=600) as stream:
            for line in stream:
                if line.startswith(b"data:") and b'"id": "fleet"' in line:
                    html = json.loads(line[5:])["html"]
                    with self.lock:
                        self.shown.append((time.perf_counter(), {int(v) for v in APPLIED.findall(html)}))

    def roll_back(self, version: int) -> float:
        body = urllib.parse.urlencode({"target": str(version), "reason": "benchmark"}).encode()
        request = urllib.request.Request(f"{self.base}/endpoints/{ENDPOINT}/rollback", data=body, headers={
            "X-CSRF-Token": self.csrf, "Accept": "application/json"})
        sent = time.perf_counter()
        self.opener.open(request, timeout=30).read()
        return sent

    def shown_at(self, version: int, after: float, deadline: float) -> float:
        while time.perf_counter() < deadline:
            with self.lock:
                hit = next((t for t, versions in self.shown if t >= after and versions == {version}), None)
            if hit is not None:
                return hit
            time.sleep(0.005)
        raise TimeoutError(f"the page never showed every worker on v{version}")


class Fleet:
    def __init__(self, address: str, n: int):
        self.applied: dict[int, list[float]] = {}
        self.loops = [SyncLoop(address, AgentIdentity(ENDPOINT, f"agent-{i:03d}", LAYERS), self._apply,
                               backoff=Backoff(initial=0.2, maximum=2)) for i in range(n)]

    async def _apply(self, version: int, precision_map: dict[str, str]) -> None:
        self.applied.setdefault(version, []).append(time.perf_counter())

    def last_ack(self, version: int, after: float, n: int, deadline: float) -> float:
        while time.perf_counter() < deadline:
            times = [t for t in self.applied.get(version, []) if t >= after]
            if len(times) >= n:
                return max(times)
            time.sleep(0.005)
        raise TimeoutError(f"not every agent applied v{version}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="mixprec-bench-dashboard-")
    address, http = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "mixprec.cli.main", "server", "--db",
                               f"sqlite:///{workdir}/cp.db", "--listen", address, "--http-listen", http,
                               "--log-level", "WARNING"], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=60)
        policies, fleet_api = policy_pb2_grpc.PolicyServiceStub(channel), agent_pb2_grpc.FleetServiceStub(channel)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, layers=LAYERS))
        for parent, match in enumerate(("layers.*.mlp.*", "layers.*")):
            policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=ENDPOINT, parent_version=parent,
                                                         rules=[pb.Rule(match=match, precision="fp8")]))
        fleet_api.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=1))
        fleet = Fleet(address, args.agents)
        running = [asyncio.run_coroutine_threadsafe(sync.run(), loop) for sync in fleet.loops]
        fleet.last_ack(1, 0.0, args.agents, time.perf_counter() + 120)
        print(f"{args.agents} agents on v1; dashboard at http://{http}/", flush=True)
        page = Page(f"http://{http}")

        acks, shown, grpc_acks = [], [], []
        for i in range(args.rounds):
            version = 2 if i % 2 == 0 else 1
            sent = page.roll_back(version)
            acks.append(fleet.last_ack(version, sent, args.agents, sent + 30) - sent)
            shown.append(page.shown_at(version, sent, sent + 30) - sent)
            print(f"  dashboard rollback {i + 1}/{args.rounds} to v{version}: last ACK {acks[-1] * 1000:.0f} ms, "
                  f"on the page {shown[-1] * 1000:.0f} ms", flush=True)
        for i in range(args.rounds):
            version = 2 if i % 2 == 0 else 1
            sent = time.perf_counter()
            fleet_api.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, to_version=version, reason="benchmark"))
            grpc_acks.append(fleet.last_ack(version, sent, args.agents, sent + 30) - sent)

        print(f"\n{'path':<40}{'agents':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for name, values in (("dashboard action -> last agent ACK", acks),
                             ("dashboard action -> shown on the page", shown),
                             ("gRPC Rollback -> last agent ACK", grpc_acks)):
            print(f"{name:<40}{args.agents:>7}{percentile(values, 50) * 1000:>10.0f}"
                  f"{percentile(values, 99) * 1000:>10.0f}{max(values) * 1000:>10.0f}")
        ratio = statistics.median(acks) / statistics.median(grpc_acks)
        print(f"dashboard vs gRPC to the last ACK (median): {ratio:.2f}x; goal: shown on the page within 2000 ms "
              f"(max {max(shown) * 1000:.0f} ms)")
        for future in running:
            future.cancel()
        return 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
