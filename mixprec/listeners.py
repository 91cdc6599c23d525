"""The side listeners of a process: Prometheus metrics over HTTP and plaintext gRPC health for probes.

The kubelet's gRPC probe speaks plaintext HTTP/2 only, so a process whose main port uses TLS answers
its probes on a listener that serves nothing but grpc.health.v1.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc
from prometheus_client import CollectorRegistry, start_http_server

from mixprec.errors import FieldError, InvalidArgument


def split_listen(address: str, field_name: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(FieldError(field_name, f"{address!r} is not HOST:PORT"))
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_metrics(address: str, registry: CollectorRegistry):
    """Serve `registry` on http://ADDRESS/metrics in a daemon thread; returns (server, thread)."""
    host, port = split_listen(address, "metrics_listen")
    return start_http_server(port, addr=host, registry=registry)


async def serve_health(servicer, address: str) -> grpc.aio.Server:
    split_listen(address, "health_listen")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server
