"""`mixprec server` and `mixprec migrate` as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mixprec.localhost import free_port, wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from worker.sync import AgentIdentity, Backoff, SyncLoop

MIXPREC = [sys.executable, "-m", "mixprec.cli.main"]


def wait_serving(address: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"server exited early: {process.stderr.read()}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise AssertionError("server never became healthy")


def start_server(db: str, *extra: str) -> tuple[subprocess.Popen, str]:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [*MIXPREC, "server", "--db", db, "--listen", address, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return process, address


def test_server_logs_each_request_exports_metrics_and_stops_on_sigterm(tmp_path):
    metrics_port = free_port()
    process, address = start_server(f"sqlite:///{tmp_path / 'cp.db'}", "--metrics-port", str(metrics_port))
    try:
        wait_serving(address, process)
        with grpc.insecure_channel(address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            stub.CreateEndpoint(pb.CreateEndpointRequest(name="e", layers=["a.b"]))
            with pytest.raises(grpc.RpcError):
                stub.GetEndpoint(pb.GetEndpointRequest(name="missing"))
        # grpc.aio sends an aborted call's status before the handler's last line runs, so the sample may
        # land a moment after the client has its answer.
        sample = 'mixprec_rpc_requests_total{code="NOT_FOUND",method="/mixprec.v1.PolicyService/GetEndpoint"} 1.0'
        wait_until(lambda: sample in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                   .read().decode(), timeout=10, what="the NOT_FOUND sample", poll=0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        process.kill()
    log = process.stderr.read()
    assert "/mixprec.v1.PolicyService/CreateEndpoint OK" in log
    assert "/mixprec.v1.PolicyService/GetEndpoint NOT_FOUND" in log
    assert "stopped" in log
    assert (tmp_path / "cp.db").exists()


def test_postgres_behind_refuses_to_start_until_migrated(empty_pg_url):
    process, _ = start_server(empty_pg_url)
    assert process.wait(timeout=30) != 0
    assert "mixprec migrate --db" in process.stderr.read()

    migrated = subprocess.run([*MIXPREC, "migrate", "--db", empty_pg_url], capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0 and "migrated database from empty" in migrated.stdout

    process, address = start_server(empty_pg_url)
    try:
        wait_serving(address, process)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_the_server_log_shows_a_hostile_nack_as_escapes_on_one_line(tmp_path):
    """An agent's NACK error is logged by the server: its escape sequences and newlines come out visible,
    so no agent can erase, rewrite or forge a line of the operator's log."""
    nack = "cannot run fp8\x1b[2K\x1b[1A\r\nINFO controlplane worker w1 applied v1\u202e"
    process, address = start_server(f"sqlite:///{tmp_path / 'cp.db'}")
    try:
        wait_serving(address, process)
        with grpc.insecure_channel(address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            stub.CreateEndpoint(pb.CreateEndpointRequest(name="e", layers=["a.b"]))
            stub.CreatePolicy(pb.CreatePolicyRequest(endpoint="e", rules=[pb.Rule(match="*", precision="fp8")]))
            agent_pb2_grpc.FleetServiceStub(channel).Activate(apb.ActivateRequest(endpoint="e", version=1))

        async def refuse(version, precision_map):
            raise ValueError(nack)

        async def nacked():
            loop = SyncLoop(address, AgentIdentity("e", "w1", ["a.b"]), refuse, backoff=Backoff(0.05, 0.2))
            task = asyncio.ensure_future(loop.run())
            await asyncio.wait_for(loop.connected.wait(), 20)
            await asyncio.sleep(0.5)  # the NACK follows the assignment at once
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(nacked())
    finally:
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=30)
    (line,) = [line for line in log.splitlines() if "refused v1" in line]
    assert line.endswith("cannot run fp8\\x1b[2K\\x1b[1A\\r\\nINFO controlplane worker w1 applied v1\\u202e"), line
    assert [ch for ch in log if not ch.isprintable() and ch != "\n"] == []
