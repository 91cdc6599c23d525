"""The worker agent process: model + engine, inference server, and the stream to the control plane."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mixprec.listeners import serve_health, serve_metrics
from mixprec.transport import add_port, server_credentials
from mixprec.v1 import agent_pb2 as apb
from worker.admission import ServingLoad
from worker.client_tokens import ClientTokens
from worker.credentials import IssuedToken
from worker.engine import PassCancelled
from worker.serving import Capacity, InferenceLimits, InferenceServicer, ServingStats, add_inference_servicer
from worker.state import StateStore
from worker.sync import AgentIdentity, SyncLoop
from worker.telemetry import WorkerMetrics

log = logging.getLogger(__name__)

# Before each batch the shadow evaluation waits this long at most for serving to go idle: requests
# first, yet an evaluation still finishes under steady load.
EVAL_YIELD_S = 2.0


@dataclass
class AgentConfig:
    endpoint: str
    model: str
    server: str
    worker_id: str = ""
    state_dir: str = ".mixprec-state"
    inference_listen: str = "127.0.0.1:0"
    report_interval: float = 5.0
    token: str | None = None      # an agent token for the control plane (MIXPREC_TOKEN)
    tls_ca: str | None = None     # CA that signed the control plane's certificate (TLS when set)
    tls_client: tuple[str, str] | None = None  # (certificate, key) shown to the control plane (mutual TLS)
    tls_cert: str | None = None   # TLS for this worker's InferenceService
    tls_key: str | None = None
    client_ca: str | None = None  # mutual TLS on InferenceService
    health_listen: str = ""   # plaintext grpc.health.v1 only, for probes
    metrics_listen: str = ""  # Prometheus /metrics
    client_tokens: str | None = None  # the file of client tokens InferenceService accepts; None: no tokens asked
    inference_limits: InferenceLimits = InferenceLimits()
    capacity: Capacity = Capacity()

    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


class WorkerAgent:
    def __init__(self, config: AgentConfig, runtime):
        self.config = config
        self.runtime = runtime
        self.worker_id = config.resolved_worker_id()
        # One thread for precision changes, one for shadow evaluation, one per admitted generation and one
        # for Embed batches: applying a map never waits behind requests or an evaluation, an evaluation of
        # a map that is no longer applied stops at its next batch, and it steps aside while requests run.
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixprec-control")
        self._evaluation = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixprec-evaluation")
        self._inference = ThreadPoolExecutor(max_workers=config.capacity.max_inflight + 1,
                                             thread_name_prefix="mixprec-inference")
        self.load = ServingLoad()
        self.servicer: InferenceServicer | None = None
        self._evaluations: set[asyncio.Task] = set()
        self.stats = ServingStats()
        self.metrics = WorkerMetrics(config.endpoint, self.worker_id)
        self.inference_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics_http = None
        self.sync: SyncLoop | None = None

    async def _apply(self, version: int, precision_map: dict[str, str]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._control, self.runtime.apply, version, precision_map)

    async def _after_apply(self, version: int, precision_map: dict[str, str]) -> None:
        self._evaluate_soon(version)

    def _evaluate_soon(self, version: int) -> None:
        """Starts the shadow evaluation of the applied map apart from the apply path; never waits for it."""
        task = asyncio.ensure_future(self._evaluate(version, dict(self.sync.precision_map or {})))
        self._evaluations.add(task)
        task.add_done_callback(self._evaluations.discard)

    async def _evaluate(self, version: int, precision_map: dict[str, str]) -> None:
        """Shadow evaluation of an applied map against the resident base weights, reported upstream.

        Stops (or its result is dropped) as soon as another map is applied: nobody needs that number.
        """
        def stale() -> bool:
            return self.sync.version != version

        def between_batches() -> bool:
            self.load.wait_idle(EVAL_YIELD_S)
            return stale()

        if stale():
            return
        log.info("evaluating v%d", version)
        try:
            metrics, deltas, samples = await asyncio.get_running_loop().run_in_executor(
                self._evaluation, self.runtime.evaluate, precision_map, between_batches
            )
        except PassCancelled:
            log.info("evaluation of v%d cancelled: v%d is applied now", version, self.sync.version)
            return
        except Exception:  # noqa: BLE001 - a failed evaluation must not take the worker down
            log.exception("shadow evaluation of v%d failed", version)
            return
        if stale():
            log.info("evaluation of v%d discarded: v%d is applied now", version, self.sync.version)
            return
        log.info("v%d quality: %s", version, " ".join(f"{k}={v:+.5f}" for k, v in sorted(deltas.items())))
        self.sync.report(apb.Report(kind=apb.Report.QUALITY, version=version, metrics=metrics, deltas=deltas,
                                    samples=samples))

    async def _report_serving(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval)
            report = self.stats.take(self.runtime.version)
            if report is not None:
                self.sync.report(report)

    async def start_inference(self) -> int:
        server = grpc.aio.server()
        clients = ClientTokens(self.config.client_tokens) if self.config.client_tokens else None
        self.servicer = InferenceServicer(self.runtime, self.stats, self._inference, self.config.endpoint,
                                          self.worker_id, self.metrics, clients, self.config.inference_limits,
                                          self.config.capacity, self.load)
        add_inference_servicer(self.servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        credentials = server_credentials(self.config.tls_cert, self.config.tls_key, self.config.client_ca)
        port = add_port(server, self.config.inference_listen, credentials)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        if self.config.health_listen:
            self._health_server = await serve_health(health_servicer, self.config.health_listen)
        self._server, self.inference_port = server, port
        return port

    async def run(self, stop: asyncio.Event) -> None:
        state = StateStore(self.config.state_dir, self.config.endpoint, self.worker_id)
        identity = AgentIdentity(
            endpoint=self.config.endpoint, worker_id=self.worker_id, layers=list(self.runtime.catalog),
            model=self.config.model, hardware=apb.Hardware(**self.runtime.hardware()),
        )
        self.sync = SyncLoop(self.config.server, identity, self._apply, state=state, on_applied=self._after_apply,
                             on_report_requested=self._evaluate_soon,
                             token=self.config.token, tls_ca=self.config.tls_ca, tls_client=self.config.tls_client,
                             issued=IssuedToken(self.config.state_dir, self.config.endpoint, self.worker_id))
        # The last applied policy is live before the first request is served or the control plane answers.
        restored = await self.sync.restore()
        self.metrics.watch(lambda: self.runtime.version, self.sync.connected.is_set)
        if self.config.metrics_listen:
            self._metrics_http = serve_metrics(self.config.metrics_listen, self.metrics.registry)
        host = self.config.inference_listen.rsplit(":", 1)[0]
        port = await self.start_inference()
        identity.inference_address = f"{host}:{port}"
        log.info("worker %s serving %s on %s:%d (policy v%d%s)", self.worker_id, self.config.endpoint, host, port,
                 self.sync.version, ", restored from state dir" if restored else "")
        tasks = [asyncio.ensure_future(self.sync.run()), asyncio.ensure_future(self._report_serving())]
        try:
            await stop.wait()
        finally:
            for task in (*tasks, *self._evaluations):
                task.cancel()
            await asyncio.gather(*tasks, *self._evaluations, return_exceptions=True)
            await self._server.stop(grace=5)
            if self._health_server is not None:
                await self._health_server.stop(0)
            if self._metrics_http is not None:
                self._metrics_http[0].shutdown()
            self._control.shutdown(wait=False, cancel_futures=True)
            self._evaluation.shutdown(wait=False, cancel_futures=True)
            self._inference.shutdown(wait=False, cancel_futures=True)


async def serve(config: AgentConfig, runtime) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await WorkerAgent(config, runtime).run(stop)
    log.info("worker stopped")
