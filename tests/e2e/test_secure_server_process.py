"""`mixprec server` beyond loopback as a real process: tokens required by default, TLS, `--auth off` refused."""

from __future__ import annotations

import subprocess

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import ENV, MIXPREC, Proc

from mixprec import transport
from mixprec.localhost import free_port, wait_until

pytestmark = pytest.mark.slow


def _cli(*argv: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(ENV, MIXPREC_TOKEN=token or "")
    return subprocess.run([*MIXPREC, *argv], capture_output=True, text=True, timeout=60, env=env)


def test_a_server_beyond_loopback_requires_tokens_and_speaks_tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (str(tmp_path / n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(ca_file)
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    made = _cli("token", "create", "root", "--role", "admin", "--db", db)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()

    refused = _cli("server", "--db", db, "--listen", f"0.0.0.0:{free_port()}", "--auth", "off")
    assert refused.returncode == 2 and "auth: off is allowed only on loopback" in refused.stderr

    port = free_port()
    server = Proc("secure-server", ["server", "--db", db, "--listen", f"0.0.0.0:{port}", "--tls-cert", cert_file,
                                    "--tls-key", key_file], tmp_path)
    address = f"127.0.0.1:{port}"
    try:
        def serving() -> bool:
            try:
                with transport.channel(address, tls_ca=ca_file) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return answer.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
            except grpc.RpcError:
                return not server.alive()

        wait_until(serving, 60, "the TLS control plane", poll=0.2)
        assert server.alive(), server.log()
        no_token = _cli("--server", address, "--tls-ca", ca_file, "endpoint", "list")
        assert no_token.returncode == 6 and "UNAUTHENTICATED" in no_token.stderr
        plaintext = _cli("--server", address, "endpoint", "list", token=token)
        assert plaintext.returncode == 5
        created = _cli("--server", address, "--tls-ca", ca_file, "endpoint", "create", "emb", token=token)
        assert created.returncode == 0, created.stderr
        assert "tokens required; TLS" in server.log()
    finally:
        server.stop()
