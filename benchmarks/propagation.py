"""How fast a policy change reaches a fleet: push against a bare grpc.aio floor and against polling.

Every agent is a light one (no torch) speaking the real protocol through worker.sync.SyncLoop, one gRPC
connection each, in agent processes apart from the control plane (about 3,400 agents a process). Times
run from the start of the Activate/Rollback call to each agent's ACK, read on the machine's monotonic
clock, which every process shares.

* one replica (`--agents N`): `mixprec server` on a SQLite file. Beside it, in the same run, the *floor*:
  a bare grpc.aio server that writes the same assignment bytes to the same number of streams and counts
  the same ACKs (no database, no policy logic). Also: memory of the control plane per connected agent,
  the time for N agents to connect (each at a random moment of a --connect-window), and N pollers asking
  for the active version once a second (10 pollers share one connection).
* `--replicas R`: R control planes on one Postgres database and Redis, agents spread over them (each
  agent lists every replica, its own first); an activate through replica 1. Then the same without Redis
  (agents learn it at the replicas' re-read period), and a rollout driven by the replicas while one of
  them is SIGKILLed (and restarted) every few seconds: it must finish with every step taken exactly once.
* `--storm` (with --replicas): SIGKILL the replica holding most agents and activate a new version
  through another: every agent reconnects to a live replica (jittered backoff) and converges.

Usage: python benchmarks/propagation.py --agents 10000
       python benchmarks/propagation.py --agents 3000 --replicas 3 --storm
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import random
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid

import grpc

from mixprec.localhost import free_port
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

LAYERS = [f"layers.{i}.{g}" for i in range(6) for g in
          ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.up_proj",
           "mlp.down_proj")]
POLICIES = [("layers.*.mlp.*", "fp8"), ("layers.*", "fp8"), ("layers.*.attention.*", "fp8")]
AGENTS_PER_PROCESS = 3400
POLL_WAIT_S = 30.0  # how long the polling baseline waits for every poller to see the change
ENDPOINT = "bench"
PG_ADMIN_URL = os.environ.get("MIXPREC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MIXPREC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def more_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# --- roles that run in their own processes --------------------------------------------------------


async def run_agents(targets: list[str], first: int, count: int, window: float, report_quality: bool) -> None:
    """`count` SyncLoops; prints `connected N` and `acks VERSION T...` lines for the orchestrator."""
    from worker.sync import AgentIdentity, Backoff, SyncLoop

    acks: dict[int, list[float]] = {}
    loops: list[SyncLoop] = []

    def make(i: int) -> SyncLoop:
        # Each agent lists every replica, its own first (pick_first then fails over in that order).
        k = i % len(targets)
        rotated = targets[k:] + targets[:k]
        target = rotated[0] if len(rotated) == 1 else "ipv4:" + ",".join(rotated)
        loop: SyncLoop

        async def apply(version: int, precision_map: dict[str, str]) -> None:
            acks.setdefault(version, []).append(time.monotonic())

        async def applied(version: int, precision_map: dict[str, str]) -> None:
            fp8 = sum(p != "bf16" for p in precision_map.values())
            loop.report(apb.Report(kind=apb.Report.QUALITY, version=version, samples=8,
                                   metrics={"cosine_to_base": 1 - fp8 / 10_000}, deltas={"cosine_to_base": -fp8 / 10_000}))

        loop = SyncLoop(target, AgentIdentity(ENDPOINT, f"agent-{i:05d}", LAYERS), apply,
                        on_applied=applied if report_quality else None, backoff=Backoff(initial=0.5, maximum=5))
        return loop

    async def start(loop: SyncLoop) -> None:
        await asyncio.sleep(random.uniform(0, window))  # a fleet comes up over time, not in one SYN flood
        await loop.run()

    loops = [make(i) for i in range(first, first + count)]
    tasks = [asyncio.ensure_future(start(loop)) for loop in loops]
    said = -1
    while True:
        await asyncio.sleep(0.05)
        for version in list(acks):
            times = acks.pop(version)
            print("acks", version, *(f"{t:.6f}" for t in times), flush=True)
        connected = sum(loop.connected.is_set() for loop in loops)
        if connected != said:
            print("connected", connected, flush=True)
            said = connected
        if any(t.done() for t in tasks):
            next(t for t in tasks if t.done()).result()


async def run_pollers(target: str, count: int, interval: float) -> None:
    """`count` pollers, each reading the active version every `interval` s; prints `seen VERSION T`."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(max(1, count // 10))]
    seen: dict[int, list[float]] = {}
    calls = 0

    async def poller(i: int) -> None:
        nonlocal calls
        stub = policy_pb2_grpc.PolicyServiceStub(channels[i % len(channels)])
        await asyncio.sleep(random.uniform(0, interval))
        first = None
        while True:
            started = time.monotonic()
            try:
                version = (await stub.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT), timeout=30)).active_version
                calls += 1
                if first is None:
                    first = version
                elif version != first:
                    seen.setdefault(version, []).append(time.monotonic())
                    first = version
            except grpc.RpcError:
                pass
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    tasks = [asyncio.ensure_future(poller(i)) for i in range(count)]
    while True:
        await asyncio.sleep(0.1)
        for version in list(seen):
            print("seen", version, *(f"{t:.6f}" for t in seen.pop(version)), flush=True)
        print("calls", calls, flush=True)
        if any(t.done() for t in tasks):
            next(t for t in tasks if t.done()).result()


async def run_floor(port: int) -> None:
    """The floor: a bare grpc.aio server that fans the same bytes out to every stream and counts ACKs."""
    from controlplane.app import SERVER_OPTIONS
    from worker.sync import ACCEPTED_KEY

    streams: set[asyncio.Event] = set()
    current = {"payload": b"", "acks": 0}

    async def connect(request_iterator, context):
        await context.read()  # the hello
        await context.send_initial_metadata(((ACCEPTED_KEY, "floor"),))
        wake = asyncio.Event()
        streams.add(wake)

        async def read() -> None:
            while (message := await context.read()) is not grpc.aio.EOF:
                if message.WhichOneof("message") == "ack":
                    current["acks"] += 1

        reader = asyncio.ensure_future(read())
        reader.add_done_callback(lambda _: wake.set())
        try:
            while not reader.done():
                wake.clear()
                if current["payload"]:
                    await context.write(current["payload"])
                await wake.wait()
        finally:
            streams.discard(wake)
            reader.cancel()

    def assignment(version: int) -> bytes:
        match = POLICIES[(version - 1) % len(POLICIES)][0]
        precision_map = [pb.LayerPrecision(layer=layer, precision="fp8" if fnmatch.fnmatch(layer, match) else "bf16")
                         for layer in LAYERS]
        return apb.ControlMessage(assignment=apb.Assignment(
            version=version, nonce=uuid.uuid4().hex[:12], reason="change", precision_map=precision_map,
        )).SerializeToString()

    current["payload"] = assignment(1)  # like the control plane, every stream gets the active map at connect

    async def activate(request: apb.ActivateRequest, context) -> apb.ActivationResponse:
        current["payload"] = assignment(request.version)
        for wake in streams:
            wake.set()
        return apb.ActivationResponse(endpoint=request.endpoint, active_version=request.version,
                                      connected_workers=len(streams))

    server = grpc.aio.server(options=SERVER_OPTIONS)
    def passthrough(payload: bytes) -> bytes:  # serialized once per change, like the control plane's
        return payload

    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("mixprec.v1.AgentService", {"Connect": grpc.stream_stream_rpc_method_handler(
            connect, request_deserializer=apb.AgentMessage.FromString, response_serializer=passthrough)}),
        grpc.method_handlers_generic_handler("mixprec.v1.FleetService", {"Activate": grpc.unary_unary_rpc_method_handler(
            activate, request_deserializer=apb.ActivateRequest.FromString,
            response_serializer=apb.ActivationResponse.SerializeToString)}),
    ))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- the orchestrator -------------------------------------------------------------------------------


class Child:
    """A process of this benchmark (or `mixprec server`) whose stdout lines are parsed as they come."""

    def __init__(self, process: asyncio.subprocess.Process, on_line=None):
        self.process = process
        self._on_line = on_line
        self.reader = asyncio.ensure_future(self._read()) if on_line else None

    @classmethod
    async def start(cls, argv: list[str], log_path: str, on_line=None) -> Child:
        log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE if on_line else log, stderr=log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), limit=2**24,
        )
        return cls(process, on_line)

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            self._on_line(line.decode().split())

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            self.reader.cancel()


class Fleet:
    """Agent processes and what they report: connected counts and ACK times per version."""

    def __init__(self, name: str = "agents") -> None:
        self.name = name
        self.children: list[Child] = []
        self.connected: dict[int, int] = {}
        self.acks: dict[int, list[float]] = {}
        self.n = 0

    async def start(self, targets: list[str], n: int, window: float, logdir: str, report_quality=False) -> float:
        """Starts the agents; returns the seconds until every one of them is connected."""
        self.n = n
        started = time.monotonic()
        for index, first in enumerate(range(0, n, AGENTS_PER_PROCESS)):
            count = min(AGENTS_PER_PROCESS, n - first)
            argv = [sys.executable, __file__, "--role", "agents", "--targets", ",".join(targets), "--first",
                    str(first), "--count", str(count), "--connect-window", str(window)]
            if report_quality:
                argv.append("--report-quality")
            self.children.append(await Child.start(argv, os.path.join(logdir, f"{self.name}-{index}.log"),
                                                   lambda words, i=index: self._line(i, words)))
        await self.until(lambda: self.total_connected() >= n, 60 + 2 * window, "agents to connect")
        return time.monotonic() - started

    def _line(self, index: int, words: list[str]) -> None:
        if words[0] == "connected":
            self.connected[index] = int(words[1])
        elif words[0] == "acks":
            self.acks.setdefault(int(words[1]), []).extend(float(t) for t in words[2:])

    def total_connected(self) -> int:
        return sum(self.connected.values())

    async def until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what} "
                                 f"({self.total_connected()}/{self.n} connected)")
            await asyncio.sleep(0.02)

    async def round(self, call, version: int, timeout: float = 120) -> list[float]:
        """Runs `call` (the change) and returns each agent's time from its start to the agent's ACK."""
        self.acks.pop(version, None)
        called = time.monotonic()
        await call()
        await self.until(lambda: len(self.acks.get(version, ())) >= self.n, timeout, f"every ACK of v{version}")
        return [t - called for t in self.acks[version]]

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))
        self.children, self.connected, self.acks = [], {}, {}


async def start_server(db: str, logdir: str, name: str, redis: str | None = None,
                       port: int | None = None) -> tuple[Child, str]:
    port = port or free_port()
    argv = [sys.executable, "-m", "mixprec.cli.main", "server", "--db", db, "--listen", f"127.0.0.1:{port}",
            "--log-level", "WARNING", "--max-streams-per-token", "100000"]
    if redis:
        argv += ["--redis", redis]
    child = await Child.start(argv, os.path.join(logdir, f"{name}.log"))
    address = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
    return child, address


async def start_floor(logdir: str) -> tuple[Child, str]:
    port = free_port()
    child = await Child.start([sys.executable, __file__, "--role", "floor", "--port", str(port)],
                              os.path.join(logdir, "floor.log"))
    address = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)
    return child, address


async def prepare(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        policies = policy_pb2_grpc.PolicyServiceStub(channel)
        await policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, layers=LAYERS))
        for parent, (match, precision) in enumerate(POLICIES):
            await policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=ENDPOINT, parent_version=parent,
                                                               rules=[pb.Rule(match=match, precision=precision)]))
        await agent_pb2_grpc.FleetServiceStub(channel).Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=1))


async def changes(fleet: Fleet, address: str, rounds: int) -> dict[str, list[float]]:
    """Rounds of activate 2 (or 3) then roll back to 1, each measured to the last ACK."""
    results: dict[str, list[float]] = {"activate": [], "rollback": []}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.FleetServiceStub(channel)
        for r in range(rounds):
            version = 2 + r % 2
            results["activate"] += await fleet.round(
                lambda v=version: stub.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v), timeout=60), version)
            await asyncio.sleep(1)
            results["rollback"] += await fleet.round(
                lambda: stub.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, reason="bench", to_version=1), timeout=60),
                1)
            await asyncio.sleep(1)
    return results


async def polling(address: str, n: int, logdir: str, interval: float = 1.0) -> tuple[list[float], float]:
    seen: list[float] = []
    calls: dict[int, int] = {}

    def line(index: int, words: list[str]) -> None:
        if words[0] == "seen":
            seen.extend(float(t) for t in words[2:])
        elif words[0] == "calls":
            calls[index] = int(words[1])

    children = []
    for index, first in enumerate(range(0, n, AGENTS_PER_PROCESS)):
        count = min(AGENTS_PER_PROCESS, n - first)
        children.append(await Child.start(
            [sys.executable, __file__, "--role", "pollers", "--targets", address, "--count", str(count)],
            os.path.join(logdir, f"pollers-{index}.log"), lambda words, i=index: line(i, words)))
    await asyncio.sleep(3 * interval)
    before, t0 = sum(calls.values()), time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        called = time.monotonic()
        await agent_pb2_grpc.FleetServiceStub(channel).Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=3))
    deadline = time.monotonic() + POLL_WAIT_S
    while len(seen) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    rate = (sum(calls.values()) - before) / (time.monotonic() - t0)
    for child in children:
        await child.stop()
    return [t - called for t in seen], rate


def row(label: str, n: int, samples: list[float], note: str = "") -> str:
    ms = [s * 1000 for s in samples]
    line = f"{label:<34} {n:>6} {statistics.median(ms):>9.1f} {percentile(ms, 99):>9.1f} {max(ms):>9.1f}  {note}"
    progress(line)
    return line


HEADER = f"{'mode':<34} {'agents':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  note"


async def one_replica(n: int, rounds: int, window: float, logdir: str) -> tuple[list[str], str]:
    """The floor and the control plane, each with its own N agents, measured in alternating rounds (the
    machine's other load then weighs on both alike)."""
    floor_fleet, fleet = Fleet("floor"), Fleet("push")
    floor, floor_address = await start_floor(logdir)
    server, address = await start_server(f"sqlite:///{os.path.join(logdir, 'bench.db')}", logdir, "control-plane")
    try:
        await prepare(address)
        progress(f"floor: bare grpc.aio server, {n} agents connecting over {window:.0f}s")
        await floor_fleet.start([floor_address], n, window, logdir)
        before = rss_kib(server.process.pid)
        progress(f"control plane: {n} agents connecting over {window:.0f}s")
        connect_s = await fleet.start([address], n, window, logdir)
        await asyncio.sleep(2)
        per_agent = (rss_kib(server.process.pid) - before) / n
        progress(f"{rounds} rounds of: floor, activate, floor, rollback")
        floor_samples: list[float] = []
        push: dict[str, list[float]] = {"activate": [], "rollback": []}
        async with grpc.aio.insecure_channel(floor_address) as floor_channel, \
                grpc.aio.insecure_channel(address) as channel:
            floor_stub, stub = agent_pb2_grpc.FleetServiceStub(floor_channel), agent_pb2_grpc.FleetServiceStub(channel)
            for r in range(rounds):
                for kind, version, call in (
                    ("activate", 2 + r % 2, lambda v: stub.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v),
                                                                  timeout=60)),
                    ("rollback", 1, lambda v: stub.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, reason="bench",
                                                                              to_version=v), timeout=60)),
                ):
                    floor_version = 10 + 2 * r + (kind == "rollback")
                    floor_samples += await floor_fleet.round(
                        lambda v=floor_version: floor_stub.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v)),
                        floor_version)
                    await asyncio.sleep(1)
                    push[kind] += await fleet.round(lambda v=version, c=call: c(v), version)
                    await asyncio.sleep(1)
        await floor_fleet.stop()
        await floor.stop()
        await fleet.stop()
        progress(f"polling: {n} pollers, once a second")
        polled, rate = await polling(address, n, logdir)
    finally:
        await floor_fleet.stop()
        await floor.stop()
        await fleet.stop()
        await server.stop()
    lines = [row("floor: bare grpc.aio -> ACK", n, floor_samples, f"{2 * rounds} rounds, alternating with push"),
             row("push: Activate -> ACK", n, push["activate"]),
             row("push: Rollback -> ACK", n, push["rollback"])]
    saw = f"{len(polled)}/{n} saw the change within {POLL_WAIT_S:.0f}s; {rate:.0f} RPC/s of polling load"
    lines.append(row("poll every 1 s", n, polled + [POLL_WAIT_S] * (n - len(polled)), saw))
    lines.append(f"{'':<34} memory {per_agent:.1f} KiB per connected agent (control plane RSS); {n} agents "
                 f"connected in {connect_s:.1f}s (jittered over {window:.0f}s)")
    floor_p99 = percentile(floor_samples, 99) * 1000
    push_p99 = percentile(push["activate"] + push["rollback"], 99) * 1000
    poll_p99 = (f"{percentile(polled, 99) * 1000:.0f} ms" if len(polled) == n
                else f"over {POLL_WAIT_S * 1000:.0f} ms ({n - len(polled)} never saw it)")
    summary = (f"N={n}: push p99 {push_p99:.0f} ms = {push_p99 / floor_p99:.2f}x the bare floor "
               f"({floor_p99:.0f} ms); polling p99 {poll_p99}; {per_agent:.1f} KiB/agent; connected in {connect_s:.0f}s")
    return lines, summary


class Postgres:
    """A fresh database on the Postgres the benchmark is pointed at, dropped afterwards."""

    def __init__(self) -> None:
        import sqlalchemy as sa

        self._admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.name = f"mixprec_bench_{uuid.uuid4().hex[:8]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = self._admin.url.set(database=self.name).render_as_string(hide_password=False)
        from controlplane.storage.database import open_engine, upgrade

        engine = open_engine(self.url)
        upgrade(engine)
        engine.dispose()

    def audit(self) -> list[tuple[str, dict]]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT action, detail FROM audit_log ORDER BY id")).all()
        engine.dispose()
        return [(action, detail if isinstance(detail, dict) else json.loads(detail or "{}")) for action, detail in rows]

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._admin.dispose()


class Replicas:
    def __init__(self, db: str, logdir: str, redis: str | None):
        self.db, self.logdir, self.redis = db, logdir, redis
        self.servers: list[Child] = []
        self.addresses: list[str] = []

    async def start(self, r: int) -> None:
        for i in range(r):
            server, address = await start_server(self.db, self.logdir, f"replica-{i}", self.redis)
            self.servers.append(server)
            self.addresses.append(address)

    async def restart(self, i: int) -> None:
        port = int(self.addresses[i].rsplit(":", 1)[1])
        self.servers[i], _ = await start_server(self.db, self.logdir, f"replica-{i}", self.redis, port=port)

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))


async def replicated(n: int, r: int, rounds: int, window: float, logdir: str, storm: bool) -> tuple[list[str], list[str]]:
    lines, summary = [], []
    database = Postgres()
    try:
        for redis in (REDIS_URL, None):
            label = "with Redis" if redis else "without Redis"
            replicas = Replicas(database.url, logdir, redis)
            fleet = Fleet()
            try:
                await replicas.start(r)
                if redis:
                    await prepare(replicas.addresses[0])
                progress(f"{r} replicas {label}: {n} agents")
                await fleet.start(replicas.addresses, n, window, logdir)
                push = await changes(fleet, replicas.addresses[0], rounds if redis else 1)
                samples = push["activate"] + push["rollback"]
                lines.append(row(f"{r} replicas {label} -> ACK", n, samples, "activate/rollback via replica 1"))
                summary.append(f"N={n} on {r} replicas {label}: push p99 {percentile(samples, 99) * 1000:.0f} ms")
                if redis and storm:
                    line, said = await reconnect_storm(fleet, replicas, n)
                    lines.append(line)
                    summary.append(f"N={n} storm: {said}")
            finally:
                await fleet.stop()
                await replicas.stop()
        line, said = await chaos_rollout(database, max(10, n // 10), r, logdir)
        lines.append(line)
        summary.append(f"rollout under chaos: {said}")
    finally:
        database.drop()
    return lines, summary


async def rollback_to_1(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await agent_pb2_grpc.FleetServiceStub(channel).Rollback(
            apb.RollbackRequest(endpoint=ENDPOINT, reason="bench", to_version=1), timeout=60)


async def reconnect_storm(fleet: Fleet, replicas: Replicas, n: int) -> tuple[str, str]:
    """SIGKILL the replica holding most agents, activate through another; time until all are back and on it."""
    victim = 0  # agent i lists replica i % R first: replica 1 holds the most (or as many as any)
    progress(f"storm: SIGKILL replica {victim + 1}")
    replicas.servers[victim].kill()
    killed = time.monotonic()
    fleet.acks.pop(2, None)
    async with grpc.aio.insecure_channel(replicas.addresses[1]) as channel:
        await agent_pb2_grpc.FleetServiceStub(channel).Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=2))
    await fleet.until(lambda: len(fleet.acks.get(2, ())) >= n, 60, "every agent on v2 after the storm")
    converged = max(fleet.acks[2]) - killed
    await fleet.until(lambda: fleet.total_connected() >= n, 60, "every agent reconnected")
    reconnected = time.monotonic() - killed
    await replicas.restart(victim)
    await fleet.round(lambda: rollback_to_1(replicas.addresses[1]), 1)  # the next mode starts from v1
    said = (f"every agent on the new version {converged:.1f}s after the kill; all reconnected within "
            f"{reconnected:.1f}s")
    progress(f"storm: {said}")
    return f"{'storm: SIGKILL replica 1':<34} {n:>6}  {said}", said


async def chaos_rollout(database: Postgres, n: int, r: int, logdir: str) -> tuple[str, str]:
    """A rollout driven by R replicas while one is SIGKILLed and restarted every few seconds."""
    replicas = Replicas(database.url, logdir, REDIS_URL)
    fleet = Fleet()
    kills = 0
    try:
        await replicas.start(r)
        progress(f"rollout under chaos: {n} reporting agents on {r} replicas, one SIGKILLed every 3 s")
        await fleet.start(replicas.addresses, n, 5, logdir, report_quality=True)
        async with grpc.aio.insecure_channel(replicas.addresses[0]) as channel:
            fleet_stub = agent_pb2_grpc.FleetServiceStub(channel)
            current = (await fleet_stub.GetFleet(apb.GetFleetRequest(endpoint=ENDPOINT))).active_version
            target = 3 if current != 3 else 2
            steps = [rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=10), rpb.RolloutStep(percent=25),
                     rpb.RolloutStep(percent=50), rpb.RolloutStep(percent=100)]
            await rollout_pb2_grpc.RolloutServiceStub(channel).StartRollout(rpb.StartRolloutRequest(
                endpoint=ENDPOINT, version=target, steps=steps,
                guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.01}, reports_per_step=1, bake_seconds=2,
                                          step_timeout_seconds=60)))
        started = time.monotonic()
        state = None
        while time.monotonic() - started < 240:
            await asyncio.sleep(3)
            victim = random.randrange(r)
            replicas.servers[victim].kill()
            kills += 1
            await replicas.restart(victim)
            live = replicas.addresses[(victim + 1) % r]
            async with grpc.aio.insecure_channel(live) as channel:
                state = await rollout_pb2_grpc.RolloutServiceStub(channel).GetRollout(
                    rpb.GetRolloutRequest(endpoint=ENDPOINT), timeout=10)
            if state.state not in (rpb.RUNNING, rpb.PAUSED):
                break
        elapsed = time.monotonic() - started
    finally:
        await fleet.stop()
        await replicas.stop()
    steps_taken = [d.get("step") for action, d in database.audit() if action == "rollout.step"]
    in_order = steps_taken == list(range(1, len(steps_taken) + 1))
    outcome = rpb.RolloutState.Name(state.state) if state else "unknown"
    said = (f"{outcome} in {elapsed:.0f}s with {kills} SIGKILLs; steps taken {steps_taken} "
            f"({'each once, in order' if in_order else 'NOT each once in order'})")
    progress(f"rollout under chaos: {said}")
    return f"{'rollout under chaos':<34} {n:>6}  {said}", said


async def bench(args) -> list[str]:
    lines, summary = [HEADER], []
    with tempfile.TemporaryDirectory() as logdir:
        try:
            for n in args.agents:
                if args.replicas > 1:
                    more, said = await replicated(n, args.replicas, args.rounds, args.connect_window, logdir,
                                                  args.storm)
                    lines += more
                    summary += said
                else:
                    more, said = await one_replica(n, args.rounds, args.connect_window, logdir)
                    lines += more
                    summary.append(said)
        except BaseException:
            for name in sorted(os.listdir(logdir)):
                if name.endswith(".log"):
                    tail = open(os.path.join(logdir, name), errors="replace").read()[-1500:]
                    print(f"--- {name}\n{tail}", file=sys.stderr)
            raise
    return lines + summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000])
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--storm", action="store_true", help="with --replicas: SIGKILL the busiest replica")
    parser.add_argument("--rounds", type=int, default=2, help="activate + rollback rounds per mode")
    parser.add_argument("--connect-window", type=float, default=None,
                        help="seconds over which agents connect (default: N/400, at least 2)")
    parser.add_argument("--role", choices=("agents", "pollers", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--report-quality", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    more_open_files()
    if args.role == "agents":
        asyncio.run(run_agents(args.targets.split(","), args.first, args.count, args.connect_window or 0,
                               args.report_quality))
        return 0
    if args.role == "pollers":
        asyncio.run(run_pollers(args.targets, args.count, 1.0))
        return 0
    if args.role == "floor":
        asyncio.run(run_floor(args.port))
        return 0
    if args.storm and args.replicas < 2:
        parser.error("--storm needs --replicas 2 or more")
    if args.connect_window is None:
        args.connect_window = max(2.0, max(args.agents) / 400)
    print("\n".join(asyncio.run(bench(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
