"""What the security layer costs per call, and how fast hostile requests are turned away.

Starts one control plane in this process (SQLite, loopback) per configuration and times sequential
GetEndpoint calls: no tokens on plaintext (the demo), tokens on plaintext, tokens over TLS (a
run-time CA from trustme). Then times the refusal of two requests that used to exhaust the server: a
3.8 MB glob in ResolvePolicy and a 100,000-deep artifact. Then hostile bytes: policy YAML 100,000 deep
and alias bombs given to the CLI, escape sequences in a NACK and a reason shown by `mixprec fleet` and
`mixprec audit`, damaged worker state files, an unwritable state path and an exception in the sync
loop (how long each takes to be refused or survived, and how). With --server it times that server
instead (pass --token and, for TLS, --tls-ca).

Usage: python benchmarks/security.py [--calls 500] [--server HOST:PORT --token T --tls-ca CA.pem]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

import grpc

from mixprec import transport
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

LAYERS = [f"layers.{i}.{g}" for i in range(6) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]


class InProcessServer:
    def __init__(self, db_url: str, **options):
        from controlplane.app import ControlPlane

        self.plane = ControlPlane(db_url, "127.0.0.1:0", **options)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(self.plane.start(), self.loop).result(60)
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.plane.stop(grace=1), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def time_calls(stub, calls: int) -> list[float]:
    request = pb.GetEndpointRequest(name="emb")
    for _ in range(20):  # warm the connection (and the TLS session, the token check cache)
        stub.GetEndpoint(request, timeout=10)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetEndpoint(request, timeout=10)
        times.append((time.perf_counter() - started) * 1000)
    return times


def refusal_ms(stub) -> list[tuple[str, float, str]]:
    cases = [
        ("ResolvePolicy, 3.8 MB glob", stub.ResolvePolicy,
         pb.ResolvePolicyRequest(endpoint="emb", rules=[pb.Rule(match="*a" * 1_900_000, precision="fp8")])),
        ("CreatePolicy, artifact 100,000 deep", stub.CreatePolicy,
         pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=[pb.Rule(match="*", precision="fp8")],
                                artifact_json="[" * 100_000 + "]" * 100_000)),
    ]
    rows = []
    for name, call, request in cases:
        started = time.perf_counter()
        try:
            call(request, timeout=60)
            code = "OK"
        except grpc.RpcError as err:
            code = err.code().name
        rows.append((name, (time.perf_counter() - started) * 1000, code))
    return rows


ESCAPES = "\x1b[2K\x1b[1A\rall layers applied"  # erase the line, go up, overwrite it
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)) + "rules: *i\n"
BAD_STATE = {
    "version 1e400": '{"endpoint": "bytes", "version": 1e400, "precision_map": {}}',
    "version -1": '{"endpoint": "bytes", "version": -1, "precision_map": {}}',
    "version 2^31": '{"endpoint": "bytes", "version": 2147483648, "precision_map": {}}',
    "100,000 deep": "[" * 100_000 + "]" * 100_000,
}


def _cli(*argv: str) -> tuple[float, int, str]:
    from mixprec.cli.main import main

    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return (time.perf_counter() - started) * 1000, code, out.getvalue()


def _shown(text: str) -> str:
    raw = any(not ch.isprintable() and ch != "\n" for ch in text)
    return "RAW control characters" if raw else ("escaped (\\x1b)" if "\\x1b" in text else "not shown")


async def _agent_run(address: str, worker: str, apply, folder: pathlib.Path | None = None, on_applied=None):
    from worker.state import StateStore
    from worker.sync import AgentIdentity, Backoff, SyncLoop

    state = StateStore(folder, "bytes", worker) if folder else None
    return SyncLoop(address, AgentIdentity("bytes", worker, LAYERS), apply, state=state, on_applied=on_applied,
                    backoff=Backoff(initial=0.05, maximum=0.2))


async def _until(predicate, timeout: float = 20) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            return float("nan")
        await asyncio.sleep(0.005)
    return (time.perf_counter() - started) * 1000


def hostile_bytes(address: str, folder: str) -> list[tuple[str, float, str]]:
    """(case, ms, answer) for hostile bytes against a server without tokens (the demo's)."""
    rows = []
    paths = {"policy YAML 100,000 deep": "rules: " + "[" * 100_000 + "]" * 100_000,
             f"policy YAML alias bomb ({len(ALIAS_BOMB)} bytes)": ALIAS_BOMB}
    for name, text in paths.items():
        path = os.path.join(folder, "hostile.yaml")
        pathlib.Path(path).write_text(text)
        ms, code, _ = _cli("--server", address, "policy", "validate", "emb", "-f", path)
        rows.append((name, ms, f"exit {code}"))

    channel = transport.channel(address)
    stub, fleet = policy_pb2_grpc.PolicyServiceStub(channel), agent_pb2_grpc.FleetServiceStub(channel)
    stub.CreateEndpoint(pb.CreateEndpointRequest(name="bytes", layers=LAYERS))
    for parent in (0, 1):
        stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="bytes", parent_version=parent,
                                                 rules=[pb.Rule(match="*", precision="fp8")]))
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=1, reason=ESCAPES))

    async def refuse(version, precision_map):
        raise ValueError(ESCAPES)

    async def nacked():
        loop = await _agent_run(address, "w-nack", refuse)
        task = asyncio.ensure_future(loop.run())
        await _until(lambda: any(w.last_nack for w in fleet.GetFleet(apb.GetFleetRequest(endpoint="bytes")).workers))
        await _stop(task)

    asyncio.run(nacked())
    for command in ("fleet", "audit"):
        ms, _, out = _cli("--server", address, command, "bytes")
        rows.append((f"escapes shown by `mixprec {command}`", ms, _shown(out)))
    for name, text in BAD_STATE.items():
        rows.append((f"state file {name}", *asyncio.run(_restore(address, pathlib.Path(folder) / name, text))))
    rows.append(("unwritable state path", *asyncio.run(_unwritable(address, fleet, pathlib.Path(folder)))))
    rows.append(("exception in the sync loop", *asyncio.run(_crash(address))))
    return rows


async def _applied(version, precision_map):
    pass


async def _restore(address: str, folder: pathlib.Path, text: str) -> tuple[float, str]:
    folder.mkdir()
    loop = await _agent_run(address, "w-state", _applied, folder)
    loop._state.path.write_text(text)
    started = time.perf_counter()
    try:
        await loop.restore()
    except Exception as err:  # noqa: BLE001 - what the old worker did at every start
        return (time.perf_counter() - started) * 1000, f"crashed ({type(err).__name__})"
    ms = (time.perf_counter() - started) * 1000
    aside = any(folder.glob("*.bad-*"))
    return ms, f"set aside, started at v{loop.version}" if aside else f"kept, started at v{loop.version}"


async def _unwritable(address: str, fleet, folder: pathlib.Path) -> tuple[float, str]:
    (folder / "file").write_text("")
    loop = await _agent_run(address, "w-disk", _applied, folder / "file" / "state")
    task = asyncio.ensure_future(loop.run())
    await _until(lambda: loop.version == 1)
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=2))
    ms = await _until(lambda: loop.version == 2)
    await _stop(task)
    fleet.Activate(apb.ActivateRequest(endpoint="bytes", version=1))
    return ms, "sync ENDED" if math.isnan(ms) else "sync went on (next version applied)"


async def _crash(address: str) -> tuple[float, str]:
    failed = []

    async def fail_once(version, precision_map):
        if not failed:
            failed.append(time.perf_counter())
            raise RuntimeError("injected")

    loop = await _agent_run(address, "w-crash", _applied, on_applied=fail_once)
    task = asyncio.ensure_future(loop.run())
    await _until(lambda: bool(failed))
    await _until(lambda: loop._outbox is None, timeout=5)  # the failed session is over
    restarted = not math.isnan(await _until(loop.connected.is_set, timeout=20))
    ms = (time.perf_counter() - failed[0]) * 1000
    await _stop(task)
    return ms, "restarted after a backoff" if restarted else "sync ENDED"


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.2)  # the server sees the stream end before it is stopped


def configurations(folder: str):
    """(label, server options, client options) with the tokens and certificates they need."""
    import trustme

    from controlplane.auth import TokenService
    from controlplane.storage.database import ensure_schema, open_engine
    from controlplane.storage.unit_of_work import unit_of_work_factory

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: os.path.join(folder, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    ca.cert_pem.write_to_path(paths["ca.pem"])
    cert.cert_chain_pems[0].write_to_path(paths["cert.pem"])
    cert.private_key_pem.write_to_path(paths["key.pem"])
    tls = transport.server_credentials(paths["cert.pem"], paths["key.pem"])
    db = f"sqlite:///{folder}/bench.db"
    engine = open_engine(db)
    ensure_schema(engine)
    token, _ = TokenService(unit_of_work_factory(engine)).create("bench", "admin")
    engine.dispose()
    return db, [
        ("no tokens, plaintext (demo)", {"auth": "off"}, {}),
        ("tokens, plaintext", {"auth": "required"}, {"token": token}),
        ("tokens, TLS", {"auth": "required", "tls_credentials": tls}, {"token": token, "tls_ca": paths["ca.pem"]}),
    ]


def row(label: str, times: list[float], base: float | None) -> str:
    p50 = statistics.median(times)
    p99 = sorted(times)[int(0.99 * (len(times) - 1))]
    ratio = f"{p50 / base:5.2f}x" if base else "    -"
    return f"{label:<30} {len(times):>6} {p50:>8.2f} {p99:>8.2f}  {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="timed GetEndpoint calls per configuration")
    parser.add_argument("--server", default=None, help="time this control plane instead (needs endpoint 'emb')")
    parser.add_argument("--token", default=os.environ.get("MIXPREC_TOKEN"), help="token for --server")
    parser.add_argument("--tls-ca", default=os.environ.get("MIXPREC_TLS_CA"), help="CA for --server's TLS")
    args = parser.parse_args()
    from mixprec.logs import configure_logging

    configure_logging("CRITICAL")  # the hostile cases log what they survive; the table says it
    header = f"{'configuration':<30} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  vs first"
    if args.server:
        stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(args.server, args.token, args.tls_ca))
        print(header)
        print(row(args.server, time_calls(stub, args.calls), None))
        return 0
    results, refusals, hostile = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        db, configs = configurations(folder)
        for label, server_options, client_options in configs:
            server = InProcessServer(db, **server_options)
            try:
                stub = policy_pb2_grpc.PolicyServiceStub(transport.channel(server.address, **client_options))
                if not results:
                    stub.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
                    stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=[pb.Rule(match="*", precision="fp8")]))
                results.append((label, time_calls(stub, args.calls)))
                if not server_options.get("auth") == "required":
                    hostile = hostile_bytes(server.address, folder)
                if client_options.get("tls_ca"):
                    refusals = refusal_ms(stub)
            finally:
                server.stop()
    print(header)
    base = statistics.median(results[0][1])
    for label, times in results:
        print(row(label, times, base))
    print()
    print(f"{'hostile request':<38} {'ms':>8}  answer")
    for name, ms, code in refusals + hostile:
        print(f"{name:<38} {ms:>8.1f}  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
