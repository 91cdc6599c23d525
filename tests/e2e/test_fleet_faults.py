"""Faults with real processes: a control plane SIGKILLed right after a report, a stalled database."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import ControlPlaneProc
from support import LAYERS, LightAgent, eventually, rules

from controlplane.storage.database import open_engine, upgrade
from mixprec.localhost import wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb

pytestmark = pytest.mark.slow


def prepare(plane: ControlPlaneProc, endpoint: str = "emb") -> None:
    plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name=endpoint, layers=LAYERS))
    plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=endpoint, parent_version=0,
                                                       rules=rules(("layers.0.mlp.*", "fp8"))))
    plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint=endpoint, parent_version=1,
                                                       rules=rules(("*", "fp8"))))
    plane.fleet.Activate(apb.ActivateRequest(endpoint=endpoint, version=1))


def test_a_report_lost_with_a_sigkilled_control_plane_is_sent_again_and_stored(tmp_path):
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    plane = ControlPlaneProc(db, tmp_path)
    prepare(plane)

    async def scenario():
        nonlocal plane
        agent = LightAgent(plane.address, "emb", "w1").start()
        agent.loop._on_applied = None  # this test sends the report itself
        await asyncio.wait_for(agent.loop.connected.wait(), 30)
        await eventually(lambda: agent.applied == [1], what="v1 applied")
        agent.loop.report(apb.Report(kind=apb.Report.QUALITY, version=1, deltas={"cosine_to_base": -0.001},
                                     metrics={"cosine_to_base": 0.999}, samples=8))
        port = plane.port
        plane.kill()  # before this event loop has run again: the report dies with the control plane
        assert agent.loop.unacknowledged_reports == [1]
        plane = ControlPlaneProc(db, tmp_path, port)
        await eventually(lambda: agent.loop.unacknowledged_reports == [], timeout=30,
                         what="the report resent and acknowledged")
        await agent.stop()

    try:
        asyncio.run(scenario())
        quality = plane.workers("emb")["w1"].last_quality
        assert quality.version == 1 and quality.deltas["cosine_to_base"] == pytest.approx(-0.001)
    finally:
        plane.stop()


class StallableProxy:
    """A TCP proxy this test owns: forwards both ways until stalled; stalled, it holds every byte (the
    peer sees a network that stopped answering, not a refused connection)."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._flowing.set()
        self._listener.close()
        for s in self._sockets:
            s.close()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return -1


def activations(url: str) -> list[tuple[int, str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version, kind FROM activations ORDER BY id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_a_write_that_timed_out_on_a_stalled_database_never_commits_later_and_a_retry_applies_once(
        tmp_path, empty_pg_url):
    engine = open_engine(empty_pg_url)
    upgrade(engine)
    engine.dispose()
    direct = sa.engine.make_url(empty_pg_url)
    proxy = StallableProxy((direct.host, direct.port or 5432))
    plane = ControlPlaneProc(direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
                             tmp_path)
    try:
        prepare(plane)
        assert health(plane.address) == health_pb2.HealthCheckResponse.SERVING
        proxy.stall()
        with pytest.raises(grpc.RpcError) as failed:
            plane.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2, request_id="change-42"), timeout=3)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: health(plane.address) == health_pb2.HealthCheckResponse.NOT_SERVING, 20,
                   "health NOT_SERVING while the database is stalled", poll=0.2)

        proxy.resume()  # the held statements reach Postgres now, long after the caller gave up
        wait_until(lambda: health(plane.address) == health_pb2.HealthCheckResponse.SERVING, 30,
                   "health SERVING again", poll=0.2)
        time.sleep(2)  # the held transaction runs on now; it must end without committing
        assert activations(empty_pg_url) == [(1, "activate")]  # the failed call took no effect

        first = plane.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2, request_id="change-42"),
                                     timeout=10)
        again = plane.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2, request_id="change-42"),
                                     timeout=10)
        assert (first.previous_version, first.active_version) == (1, 2) and again == first
        assert activations(empty_pg_url) == [(1, "activate"), (2, "activate")]
        with pytest.raises(grpc.RpcError) as reused:
            plane.fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1, request_id="change-42"), timeout=10)
        assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reused with other" in reused.value.details()
    finally:
        plane.stop()
        proxy.close()
