"""The composition root: builds the real storage, services and gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from controlplane import blocking
from controlplane.api.observability import ObservabilityInterceptor, RpcMetrics
from controlplane.api.policy_servicer import PolicyServicer
from controlplane.services.policies import PolicyService
from controlplane.storage.database import ensure_schema, open_engine
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec.v1 import policy_pb2, policy_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,)


class ControlPlane:
    """One control plane replica: database, services and the gRPC server on `listen`."""

    def __init__(self, db_url: str, listen: str = "127.0.0.1:0", metrics_port: int | None = None):
        self.db_url = db_url
        self.listen = listen
        self.metrics_port = metrics_port
        self.registry = CollectorRegistry()
        self.engine = open_engine(db_url)
        self.policies = PolicyService(unit_of_work_factory(self.engine))
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http = None
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()

    async def start(self) -> int:
        blocking.configure()
        await blocking.run_blocking(ensure_schema, self.engine)
        server = grpc.aio.server(
            interceptors=[ObservabilityInterceptor(RpcMetrics(self.registry))],
            options=[("grpc.so_reuseport", 0)],
        )
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(self.policies), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.port = server.add_insecure_port(self.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await _maybe_await(self._health.set(name, health_pb2.HealthCheckResponse.SERVING))
        if self.metrics_port is not None:
            self._metrics_http = start_http_server(self.metrics_port, addr="127.0.0.1", registry=self.registry)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        for name in ("", *SERVICE_NAMES):
            await _maybe_await(self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))
        await self._server.stop(grace)
        self._server = None
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()
        self.engine.dispose()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(db_url: str, listen: str, metrics_port: int | None = None, ready=None) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight RPCs and stop."""
    plane = ControlPlane(db_url, listen, metrics_port)
    port = await plane.start()
    host = listen.rsplit(":", 1)[0]
    log.info("mixprec control plane serving on %s:%d (db %s)", host, port, plane.engine.url.render_as_string())
    if ready is not None:
        ready(port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight requests")
    await plane.stop(grace=5.0)
    log.info("stopped")


async def _maybe_await(result):
    if asyncio.iscoroutine(result):
        await result
