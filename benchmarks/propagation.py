"""How fast a policy change reaches a fleet: push (AgentService stream) against polling.

Starts `mixprec server` on a temporary SQLite file, connects N light agents (no torch; they speak the
real protocol through worker.sync.SyncLoop, one gRPC connection each), then measures the time from the
Activate or Rollback call returning to each agent's ACK, as p50/p99/max. The baseline is the same N
agents asking for the endpoint's active version once a second (GetEndpoint), as a poller would.

Usage: python benchmarks/propagation.py [--agents 100 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

from mixprec.localhost import free_port
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from worker.sync import AgentIdentity, Backoff, SyncLoop

LAYERS = [f"layers.{i}.{g}" for i in range(6) for g in
          ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.up_proj",
           "mlp.down_proj")]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Fleet:
    def __init__(self, address: str, endpoint: str, n: int):
        self.acked: dict[int, list[float]] = {}
        self.loops = [
            SyncLoop(address, AgentIdentity(endpoint, f"agent-{i:04d}", LAYERS), self._apply,
                     backoff=Backoff(initial=0.2, maximum=2))
            for i in range(n)
        ]
        self.tasks: list[asyncio.Task] = []

    async def _apply(self, version: int, precision_map: dict[str, str]) -> None:
        self.acked.setdefault(version, []).append(time.perf_counter())

    async def start(self) -> None:
        for loop in self.loops:
            self.tasks.append(asyncio.ensure_future(loop.run()))
            await asyncio.sleep(0.002)  # a fleet comes up over time, not in one SYN flood
        await asyncio.wait_for(asyncio.gather(*(loop.connected.wait() for loop in self.loops)), 300)

    async def wait_for(self, version: int, timeout: float = 60) -> list[float]:
        deadline = time.perf_counter() + timeout
        while len(self.acked.get(version, [])) < len(self.loops) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        return self.acked.get(version, [])

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def measure_push(address: str, endpoint: str, n: int, rounds: int) -> dict[str, list[float]]:
    fleet = Fleet(address, endpoint, n)
    await fleet.start()
    async with grpc.aio.insecure_channel(address) as channel:
        fleet_stub = agent_pb2_grpc.FleetServiceStub(channel)
        results: dict[str, list[float]] = {"activate": [], "rollback": [], "activate rpc": [], "rollback rpc": []}
        for r in range(rounds):
            for kind in ("activate", "rollback"):
                # Each round moves 1 -> 2 (or 3) -> back to 1, so every call is a real change.
                version = (2 + r % 2) if kind == "activate" else 1
                fleet.acked.pop(version, None)
                called = time.perf_counter()
                if kind == "activate":
                    await fleet_stub.Activate(apb.ActivateRequest(endpoint=endpoint, version=version))
                else:
                    await fleet_stub.Rollback(apb.RollbackRequest(endpoint=endpoint, reason="bench",
                                                                  to_version=version))
                returned = time.perf_counter()
                results[f"{kind} rpc"].append(returned - called)
                acks = await fleet.wait_for(version)
                if len(acks) < n:
                    raise SystemExit(f"only {len(acks)} of {n} agents acknowledged v{version}")
                # Measured from the call's start: the control plane pushes before it answers, so most
                # ACKs arrive before the call returns and "after it returned" would read as zero.
                results[kind].extend(t - called for t in acks)
                await asyncio.sleep(0.5)
    await fleet.stop()
    return results


async def measure_polling(address: str, endpoint: str, n: int, interval: float = 1.0) -> tuple[list[float], float]:
    """Each poller reads the endpoint every `interval` s, starting at a random phase."""
    seen: list[float] = []
    target = {"version": None, "changed_at": 0.0}
    calls = 0
    stop = asyncio.Event()

    async def poller(stub) -> None:
        nonlocal calls
        await asyncio.sleep(random.uniform(0, interval))
        noticed = None
        while not stop.is_set():
            endpoint_state = await stub.GetEndpoint(pb.GetEndpointRequest(name=endpoint))
            calls += 1
            if target["version"] is not None and endpoint_state.active_version == target["version"] and noticed is None:
                noticed = time.perf_counter()
                seen.append(noticed - target["changed_at"])
            await asyncio.sleep(interval)

    channels = [grpc.aio.insecure_channel(address) for _ in range(n)]
    tasks = [asyncio.ensure_future(poller(policy_pb2_grpc.PolicyServiceStub(c))) for c in channels]
    await asyncio.sleep(interval * 2)
    async with grpc.aio.insecure_channel(address) as channel:
        called = time.perf_counter()  # measured from the call's start, as the push is
        response = await agent_pb2_grpc.FleetServiceStub(channel).Activate(
            apb.ActivateRequest(endpoint=endpoint, version=3))
        target["changed_at"], target["version"] = called, response.active_version
    started_calls, started = calls, time.perf_counter()
    deadline = time.perf_counter() + 30
    while len(seen) < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    rate = (calls - started_calls) / (time.perf_counter() - started)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    return seen, rate


def prepare(address: str, endpoint: str) -> None:
    with grpc.insecure_channel(address) as channel:
        policies = policy_pb2_grpc.PolicyServiceStub(channel)
        policies.CreateEndpoint(pb.CreateEndpointRequest(name=endpoint, layers=LAYERS))
        for parent, (match, precision) in enumerate(
            [("layers.*.mlp.*", "fp8"), ("layers.*", "fp8"), ("layers.*.attention.*", "fp8")]
        ):
            policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=endpoint, parent_version=parent,
                                                         rules=[pb.Rule(match=match, precision=precision)]))
        agent_pb2_grpc.FleetServiceStub(channel).Activate(apb.ActivateRequest(endpoint=endpoint, version=1))


def start_server(db: str) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    log = open(db.removeprefix("sqlite:///") + ".log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "mixprec.cli.main", "server", "--db", db, "--listen", address, "--log-level", "WARNING"],
        stdout=log, stderr=log,
    )
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    return process, address


def row(label: str, n: int, samples: list[float], extra: str = "") -> str:
    ms = [s * 1000 for s in samples]
    return (f"{label:<22} {n:>6} {statistics.median(ms):>9.1f} {percentile(ms, 99):>9.1f} {max(ms):>9.1f}  {extra}")


async def bench(agent_counts: list[int], rounds: int) -> list[str]:
    # One event loop for the whole run: grpc.aio keeps per-loop state that outlives asyncio.run().
    lines = [f"{'mode':<22} {'agents':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  note"]
    summary = []
    for n in agent_counts:
        with tempfile.TemporaryDirectory() as tmp:
            process, address = start_server(f"sqlite:///{os.path.join(tmp, 'bench.db')}")
            try:
                endpoint = f"bench-{n}"
                prepare(address, endpoint)
                print(f"[{n} agents] connecting and measuring push ...", file=sys.stderr, flush=True)
                push = await measure_push(address, endpoint, n, rounds)
                print(f"[{n} agents] measuring the polling baseline ...", file=sys.stderr, flush=True)
                polled, rate = await measure_polling(address, endpoint, n)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        lines.append(row("push: Activate -> ACK", n, push["activate"],
                         f"RPC itself p50 {statistics.median(push['activate rpc']) * 1000:.0f} ms"))
        lines.append(row("push: Rollback -> ACK", n, push["rollback"],
                         f"RPC itself p50 {statistics.median(push['rollback rpc']) * 1000:.0f} ms"))
        lines.append(row("poll every 1 s", n, polled, f"{rate:.0f} RPC/s of polling load"))
        all_push = push["activate"] + push["rollback"]
        summary.append((n, percentile(all_push, 99) * 1000, percentile(polled, 99) * 1000))
    for n, push_p99, poll_p99 in summary:
        lines.append(f"N={n}: push p99 {push_p99:.0f} ms vs polling p99 {poll_p99:.0f} ms "
                     f"({poll_p99 / push_p99:.1f}x sooner); goal: p99 < 500 ms at N=1000")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("\n".join(asyncio.run(bench(args.agents, args.rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
