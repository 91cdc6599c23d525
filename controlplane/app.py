"""The composition root: builds the real storage, services and gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from controlplane import blocking
from controlplane.api.costs import ExpensiveReads
from controlplane.api.edge import EdgeInterceptor
from controlplane.api.fleet_metrics import FleetMetrics
from controlplane.api.fleet_servicer import FleetServicer
from controlplane.api.notification_servicer import NotificationServicer
from controlplane.api.observability import ObservabilityInterceptor, RpcMetrics
from controlplane.api.policy_servicer import PolicyServicer
from controlplane.api.rollout_servicer import RolloutServicer
from controlplane.api.token_servicer import TokenServicer
from controlplane.auth import Authenticator, TokenService
from controlplane.database_health import DatabaseHealth
from controlplane.notifier import Notifier
from controlplane.push.agent_servicer import AgentServicer, add_agent_servicer
from controlplane.push.feeds import LocalFeed, RedisFeed
from controlplane.push.holders import StreamHolders
from controlplane.push.hub import TargetHub
from controlplane.push.recorder import FleetRecorder
from controlplane.push.session_watch import SessionWatch
from controlplane.resolution_pool import ResolutionPool
from controlplane.services.fleet import FleetService
from controlplane.services.identity import WorkerIdentity
from controlplane.services.notifications import NotificationService
from controlplane.services.policies import PolicyService
from controlplane.services.rollouts import RolloutService
from controlplane.services.telemetry import TelemetryService
from controlplane.services.webhook_targets import WebhookTargets, parse_ranges
from controlplane.services.write_requests import RequestLog
from controlplane.storage.database import ensure_schema, open_engine
from controlplane.storage.unit_of_work import unit_of_work_factory
from controlplane.web.pages import Pages
from controlplane.web.server import DashboardServer
from mixprec.errors import FieldError, InvalidArgument, MixprecError, NotFound
from mixprec.listeners import serve_health, serve_metrics
from mixprec.transport import add_port, is_loopback
from mixprec.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    notify_pb2,
    notify_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name,
    rollout_pb2.DESCRIPTOR.services_by_name["RolloutService"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    notify_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
)

# Agent streams live for days: ping idle connections so that dead peers and NATs are noticed, and
# recycle connections daily so that load spreads again over replicas added since.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_connection_age_ms", 24 * 3600 * 1000),
    ("grpc.max_connection_age_grace_ms", 60_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),  # RESOURCE_EXHAUSTED beyond; fields have own limits
]

AUTH_MODES = ("auto", "required", "off")


def tokens_required(auth: str, listen: str, field_name: str = "auth") -> bool:
    """auto: tokens are required unless the listener binds loopback only; off is refused beyond loopback."""
    if auth not in AUTH_MODES:
        raise InvalidArgument(FieldError("auth", f"{auth!r} is not one of {', '.join(AUTH_MODES)}"))
    if auth == "off" and not is_loopback(listen):
        raise InvalidArgument(FieldError(field_name, f"off is allowed only on loopback, not on {listen}"))
    return auth == "required" or (auth == "auto" and not is_loopback(listen))


class ControlPlane:
    """One control plane replica: database, services and the gRPC server on `listen`."""

    def __init__(
        self,
        db_url: str,
        listen: str = "127.0.0.1:0",
        metrics_port: int | None = None,
        redis_url: str | None = None,
        poll_interval: float = 5.0,
        rollout_interval: float = 1.0,
        metrics_listen: str | None = None,
        health_listen: str | None = None,
        metrics_interval: float = 5.0,
        notifier: dict | None = None,  # Notifier's keywords (interval, attempts, backoff, timeout)
        auth: str = "auto",
        tls_credentials: grpc.ServerCredentials | None = None,
        http_listen: str | None = None,
        http_tls: tuple[str, str] | None = None,
        stream_limits: dict | None = None,
        resolution_limits: dict | None = None,  # ExpensiveReads' keywords (per_token, total)
        webhook_allow: Sequence[str] = (),  # address ranges webhooks may reach beyond public addresses
        watch_interval: float = 1.0,
        lease_seconds: float = 15.0,
    ):
        self.db_url = db_url
        self.listen = listen
        # --metrics-port N is loopback only; --metrics-listen HOST:PORT serves the pod address.
        self.metrics_listen = metrics_listen or (f"127.0.0.1:{metrics_port}" if metrics_port is not None else None)
        self.health_listen = health_listen
        self.metrics_interval = metrics_interval
        self.redis_url = redis_url
        self.poll_interval = poll_interval
        self.rollout_interval = rollout_interval
        self.auth_required = tokens_required(auth, listen)
        self.tls_credentials = tls_credentials
        # AgentServicer's: hello_timeout, max_streams_per_token, max_worker_ids_per_token, max_reports_per_*
        self.stream_limits = stream_limits or {}
        self.replica = uuid.uuid4().hex[:12]
        self.registry = CollectorRegistry()
        self.engine = open_engine(db_url)
        self._uow = uow = unit_of_work_factory(self.engine)
        self.resolutions = ExpensiveReads(**(resolution_limits or {}))
        self.resolution_pool = ResolutionPool(self.resolutions.total)  # off the event loop's interpreter lock
        self.policies = PolicyService(uow, self.resolution_pool.resolve)
        self.fleet = FleetService(uow)
        self.rollouts = RolloutService(uow)
        self.notifications = NotificationService(uow, WebhookTargets(parse_ranges(webhook_allow)))
        self.notifier = Notifier(self.notifications, self.replica, **(notifier or {}))
        self.requests = RequestLog(uow)
        self.hub = TargetHub()
        self.recorder = FleetRecorder(self.fleet)
        self.authenticator = Authenticator(uow)
        self.tokens = TokenService(uow, on_revoke=self._sessions_ended_soon)
        self.identity = WorkerIdentity(uow, lease_seconds)
        self.holders = StreamHolders()
        self.watch = SessionWatch(self.identity, self.holders, self.authenticator, self.replica, watch_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._feed = None
        self._tasks: list[asyncio.Task] = []
        self._metrics_http = None
        self._health = health.aio.HealthServicer()
        self._health_server: grpc.aio.Server | None = None
        self.dashboard = None
        if http_listen is not None:  # the dashboard: same services, same tokens, its own listener
            authenticate = self.authenticator.authenticate if tokens_required(auth, http_listen, "http_listen") else None
            self.dashboard = DashboardServer(Pages(self.policies, self.fleet, self.rollouts, self.requests), self.endpoint_changed,
                                             http_listen, authenticate, *(http_tls or ()))
            sessions = self.dashboard.dashboard.access.sessions
            self.watch.session_tokens, self.watch.end_sessions = sessions.token_ids, sessions.end_tokens

    def _sessions_ended_soon(self) -> None:
        """A token was revoked here (called from a worker thread): forget it, look now, tell the others."""
        self.authenticator.forget()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.sessions_ended()))

    async def sessions_ended(self) -> None:
        """A token was revoked or a worker id taken over: every replica's session watch looks at once."""
        self.watch.wake()
        if self._feed is not None:
            await self._feed.publish_ended()

    async def start(self) -> int:
        blocking.configure()
        self._loop = asyncio.get_running_loop()
        await blocking.run_blocking(ensure_schema, self.engine)
        metrics = RpcMetrics(self.registry)
        self.fleet_metrics = FleetMetrics(self.registry, TelemetryService(self._uow), self.metrics_interval)
        edge = EdgeInterceptor(self.authenticator if self.auth_required else None)
        server = grpc.aio.server(interceptors=[ObservabilityInterceptor(metrics), edge], options=SERVER_OPTIONS)
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(
            PolicyServicer(self.policies, self.endpoint_changed, self.requests, self.resolutions), server
        )
        add_agent_servicer(
            AgentServicer(self.fleet, self.hub, self.recorder, self.replica, metrics.ack_latency, self.fleet_metrics,
                          **self.stream_limits, identity=self.identity, holders=self.holders),
            server,
        )
        agent_pb2_grpc.add_FleetServiceServicer_to_server(
            FleetServicer(self.fleet, self.endpoint_changed, self.requests, self.identity, self.sessions_ended), server
        )
        rollout_pb2_grpc.add_RolloutServiceServicer_to_server(
            RolloutServicer(self.rollouts, self.endpoint_changed, self.requests), server
        )
        auth_pb2_grpc.add_TokenServiceServicer_to_server(TokenServicer(self.tokens, self.requests), server)
        notify_pb2_grpc.add_NotificationServiceServicer_to_server(NotificationServicer(self.notifications, self.requests), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.port = add_port(server, self.listen, self.tls_credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await server.start()
        self._server = server
        self._feed = RedisFeed(self.redis_url, self.replica) if self.redis_url else LocalFeed()
        self._tasks = [
            asyncio.ensure_future(self.recorder.run()),
            asyncio.ensure_future(self._feed.run(self.refresh, self.watch.wake)),
            asyncio.ensure_future(self.watch.run()),
            asyncio.ensure_future(self._poll()),
            asyncio.ensure_future(self._drive_rollouts()),
            asyncio.ensure_future(self.fleet_metrics.run()),
            asyncio.ensure_future(self.notifier.run()),
            asyncio.ensure_future(DatabaseHealth(self.engine, self._health, ("", *SERVICE_NAMES)).run()),
        ]
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.health_listen:
            self._health_server = await serve_health(self._health, self.health_listen)
        if self.metrics_listen:
            self._metrics_http = serve_metrics(self.metrics_listen, self.registry)
        if self.dashboard is not None:
            await self.dashboard.start()
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self._server.stop(grace)
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.recorder.flush_before_exit()
        try:  # the streams are gone with this replica: its workers are not connected any more
            await blocking.run_blocking(self.fleet.release_replica, self.replica)
            await blocking.run_blocking(self.identity.release_replica, self.replica)
        except MixprecError as err:
            log.warning("could not mark this replica's workers disconnected: %s", err)
        await self._feed.close()
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()
        self.resolution_pool.close()
        self.engine.dispose()

    async def refresh(self, endpoint: str) -> None:
        """Re-read an endpoint's target and push it to the streams of this replica."""
        try:
            target = await blocking.run_blocking(self.fleet.target, endpoint)
        except NotFound:
            self.hub.forget(endpoint)
            return
        except MixprecError as err:
            log.warning("cannot refresh %s: %s", endpoint, err)
            return
        self.hub.publish(target)

    async def endpoint_changed(self, endpoint: str) -> int:
        """Pushes the endpoint's new target here, tells the other replicas; returns this replica's streams."""
        await self.refresh(endpoint)
        await self._feed.publish(endpoint)
        return self.hub.connected(endpoint)

    async def _poll(self) -> None:
        passes = 0
        while True:
            await asyncio.sleep(self.poll_interval)
            for endpoint in self.hub.watched():
                await self.refresh(endpoint)
            passes += 1
            if passes % 720 == 1:  # about hourly: request ids older than a day answer no retry any more
                try:
                    await blocking.run_blocking(self.requests.forget_old)
                except MixprecError as err:
                    log.warning("could not forget old request ids: %s", err)

    async def _drive_rollouts(self) -> None:
        """Advance running rollouts; any replica may, the rollout's revision makes sure only one does."""
        while True:
            await asyncio.sleep(self.rollout_interval)
            try:
                await self.recorder.flush()  # judge the reports that have arrived, not the ones in flight
                for endpoint in await blocking.run_blocking(self.rollouts.advance_all):
                    await self.endpoint_changed(endpoint)
            except MixprecError as err:
                log.warning("rollout controller: %s", err)
            except Exception:  # noqa: BLE001 - the controller must survive one bad pass
                log.exception("rollout controller pass failed")


async def serve(db_url: str, listen: str, metrics_port: int | None = None, redis_url: str | None = None,
                **options) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight RPCs and stop (options: ControlPlane's keywords)."""
    plane = ControlPlane(db_url, listen, metrics_port, redis_url, **options)
    port = await plane.start()
    host = listen.rsplit(":", 1)[0]
    log.info("mixprec control plane serving on %s:%d (db %s; tokens %s; %s)", host, port,
             plane.engine.url.render_as_string(), "required" if plane.auth_required else "off (loopback)",
             "TLS" if plane.tls_credentials else "plaintext")
    if plane.tls_credentials is None and not is_loopback(listen):
        log.warning("listening on %s without TLS: tokens and policies cross the network in the clear; "
                    "pass --tls-cert and --tls-key", listen)
    if plane.dashboard is not None:
        log.info("dashboard on %s (tokens %s)", plane.dashboard.url,
                 "required" if plane.dashboard.auth_required else "off (loopback)")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down: draining in-flight requests")
    await plane.stop(grace=5.0)
    log.info("stopped")

