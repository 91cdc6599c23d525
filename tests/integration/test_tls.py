"""TLS on every listener: the control plane and a worker's inference server, optionally mutual;
certificates are made at run time (trustme)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import LAYERS, RunningControlPlane, stubs

from mixprec import transport
from mixprec.cli.main import main
from mixprec.v1 import policy_pb2 as pb
from worker.agent import AgentConfig, WorkerAgent
from worker.sync import AgentIdentity, Backoff, SyncLoop


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    files = {"ca": folder / "ca.pem", "stranger": folder / "stranger.pem", "cert": folder / "server.pem",
             "key": folder / "server.key", "client_cert": folder / "client.pem", "client_key": folder / "client.key"}
    ca.cert_pem.write_to_path(files["ca"])
    stranger.cert_pem.write_to_path(files["stranger"])
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client = ca.issue_cert("worker-1.example")
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return {name: str(path) for name, path in files.items()}


def _list(address, **tls):
    return transport.channel(address, **tls).unary_unary(
        "/mixprec.v1.PolicyService/ListEndpoints", pb.ListEndpointsRequest.SerializeToString,
        pb.ListEndpointsResponse.FromString)(pb.ListEndpointsRequest(), timeout=5)


def test_control_plane_over_tls(pki, tmp_path, capsys):
    credentials = transport.server_credentials(pki["cert"], pki["key"])
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'tls.db'}", tls_credentials=credentials)
    try:
        policy, _ = stubs(running.address, tls_ca=pki["ca"])
        policy.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS))
        assert [e.name for e in _list(running.address, tls_ca=pki["ca"]).endpoints] == ["emb"]
        for wrong in ({}, {"tls_ca": pki["stranger"]}):  # plaintext, or a CA that did not sign it
            with pytest.raises(grpc.RpcError) as err:
                _list(running.address, **wrong)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert main(["--server", running.address, "--tls-ca", pki["ca"], "endpoint", "list"]) == 0
        assert "emb" in capsys.readouterr().out

        async def worker_stream():
            loop = SyncLoop(running.address, AgentIdentity("emb", "w1", LAYERS), _ignore,
                            backoff=Backoff(initial=0.05), tls_ca=pki["ca"])
            task = asyncio.ensure_future(loop.run())
            await asyncio.wait_for(loop.connected.wait(), 10)
            task.cancel()

        asyncio.run(worker_stream())
    finally:
        running.stop()


def test_mutual_tls_refuses_clients_without_a_certificate(pki, tmp_path):
    credentials = transport.server_credentials(pki["cert"], pki["key"], client_ca=pki["ca"])
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'mtls.db'}", tls_credentials=credentials)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _list(running.address, tls_ca=pki["ca"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert _list(running.address, tls_ca=pki["ca"], client_cert=pki["client_cert"],
                     client_key=pki["client_key"]).endpoints == []
    finally:
        running.stop()


def test_worker_inference_server_over_tls(pki):
    from worker.runtime import build_runtime

    config = AgentConfig(endpoint="llm", model="tiny-llama", server="127.0.0.1:1", inference_listen="127.0.0.1:0",
                         tls_cert=pki["cert"], tls_key=pki["key"])
    runtime = build_runtime("tiny-llama", eval_samples=0)  # the serving path needs a model behind it

    async def scenario():
        agent = WorkerAgent(config, runtime=runtime)
        port = await agent.start_inference()
        try:
            async with transport.aio_channel(f"127.0.0.1:{port}", pki["ca"]) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            async with transport.aio_channel(f"127.0.0.1:{port}") as plaintext:
                with pytest.raises(grpc.aio.AioRpcError):
                    await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=2)
        finally:
            await agent._server.stop(0)

    asyncio.run(scenario())


def test_tls_options_name_what_is_missing(tmp_path):
    from mixprec.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="--tls-key: is required"):
        transport.server_credentials(str(tmp_path / "a.pem"), None)
    with pytest.raises(InvalidArgument, match="--tls-key: cannot read"):
        transport.server_credentials(str(tmp_path / "absent.pem"), str(tmp_path / "absent.key"))
    with pytest.raises(InvalidArgument, match="--client-ca: needs --tls-cert"):
        transport.server_credentials(None, None, str(tmp_path / "ca.pem"))


async def _ignore(version, precision_map):
    return None
