"""Helpers the tests share (fixtures stay in conftest.py): a control plane on port 0 in a thread,
light agents that speak the real protocol without a model, and database snapshots."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import sqlalchemy as sa

from controlplane.storage.database import open_engine, upgrade
from mixprec import transport
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from worker.credentials import IssuedToken
from worker.state import StateStore
from worker.sync import AgentIdentity, Backoff, SyncLoop

# In CI a missing service or tool fails the run; on a laptop the tests that need it skip with the reason.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (but Alembic's), to prove that a failed call wrote nothing."""
    engine = open_engine(url)
    try:
        tables = [t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"]
        with engine.connect() as conn:
            return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr) for t in tables}
    finally:
        engine.dispose()


def migrated_sqlite(folder) -> str:
    """The URL of a new SQLite database in `folder` at the newest schema."""
    url = f"sqlite:///{folder / 'cp.db'}"
    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


class RunningControlPlane:
    """A real control plane (grpc.aio) on port 0, running its event loop in a background thread."""

    def __init__(self, db_url: str, **options):
        from controlplane.app import ControlPlane

        self.plane = ControlPlane(db_url, "127.0.0.1:0", **options)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self.plane.start())
        self.address = f"127.0.0.1:{self.port}"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self) -> None:
        self._call(self.plane.stop(grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


# "Billion laughs" in YAML: 9 levels of 9 aliases each, 10^9 strings once expanded, in 406 bytes.
ALIAS_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)) + "rules: *i\n"

LAYERS = [f"layers.{i}.{g}" for i in range(2) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]


class LightAgent:
    """A worker without a model: records what it was asked to apply; can refuse versions."""

    def __init__(self, address, endpoint, worker_id, layers=LAYERS, refuse=(), state_dir=None, token=None,
                 tls_ca=None):
        self.applied: list[int] = []
        self.refuse = set(refuse)
        state = StateStore(state_dir, endpoint, worker_id) if state_dir else None
        issued = IssuedToken(state_dir, endpoint, worker_id) if state_dir else None
        self.loop = SyncLoop(address, AgentIdentity(endpoint, worker_id, list(layers)), self._apply, state=state,
                             on_applied=self._report, backoff=Backoff(initial=0.05, maximum=0.2), token=token,
                             tls_ca=tls_ca, issued=issued)
        self.task: asyncio.Task | None = None

    async def _apply(self, version, precision_map):
        if version in self.refuse:
            raise ValueError(f"layer layers.0.mlp.up_proj cannot run {precision_map['layers.0.mlp.up_proj']}")
        self.applied.append(version)

    async def _report(self, version, precision_map):
        fp8 = sum(p != "bf16" for p in precision_map.values())
        self.loop.report(apb.Report(kind=apb.Report.QUALITY, version=version, metrics={"cosine_to_base": 1 - fp8 / 1000},
                                    deltas={"cosine_to_base": -fp8 / 1000, "kl_divergence": fp8 / 100,
                                            "team_log_loss": fp8 / 200},  # a user's metric: only its name is known
                                    samples=8))

    def start(self):
        self.task = asyncio.ensure_future(self.loop.run())
        return self

    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def eventually(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def stubs(address, token=None, tls_ca=None):
    channel = transport.channel(address, token, tls_ca)
    return policy_pb2_grpc.PolicyServiceStub(channel), agent_pb2_grpc.FleetServiceStub(channel)


def fleet_of(fleet, endpoint) -> dict[str, apb.WorkerStatus]:
    return {w.worker_id: w for w in fleet.GetFleet(apb.GetFleetRequest(endpoint=endpoint)).workers}


def rules(*pairs):
    return [pb.Rule(match=m, precision=p) for m, p in pairs]




def require_triton():
    """The Triton kernels' tests: Triton comes with the dev extra, so in CI its absence fails the run;
    elsewhere the tests skip and say why."""
    import pytest

    try:
        import triton  # noqa: F401
    except ImportError as err:
        if IN_CI:
            pytest.fail(f"Triton is not installed ({err}); the dev extra brings it (make setup)", pytrace=False)
        pytest.skip("Triton comes with the dev extra (make setup installs it)", allow_module_level=True)
