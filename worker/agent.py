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

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2_grpc
from worker.engine import PassCancelled
from worker.serving import InferenceServicer, ServingStats
from worker.state import StateStore
from worker.sync import AgentIdentity, SyncLoop

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    endpoint: str
    model: str
    server: str
    worker_id: str = ""
    state_dir: str = ".mixprec-state"
    inference_listen: str = "127.0.0.1:0"
    report_interval: float = 5.0

    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


class WorkerAgent:
    def __init__(self, config: AgentConfig, runtime):
        self.config = config
        self.runtime = runtime
        self.worker_id = config.resolved_worker_id()
        # One thread for precision changes, one for shadow evaluation, a few for inference: applying a
        # map never waits behind requests or an evaluation, and an evaluation of a map that is no longer
        # applied stops at its next batch.
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixprec-control")
        self._evaluation = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mixprec-evaluation")
        self._inference = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mixprec-inference")
        self._evaluations: set[asyncio.Task] = set()
        self.stats = ServingStats()
        self.inference_port: int | None = None
        self._server: grpc.aio.Server | None = None
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

        if stale():
            return
        log.info("evaluating v%d", version)
        try:
            metrics, deltas, samples = await asyncio.get_running_loop().run_in_executor(
                self._evaluation, self.runtime.evaluate, precision_map, stale
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
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(self.runtime, self.stats, self._inference, self.config.endpoint, self.worker_id), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port(self.config.inference_listen)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        self._server, self.inference_port = server, port
        return port

    async def run(self, stop: asyncio.Event) -> None:
        state = StateStore(self.config.state_dir, self.config.endpoint, self.worker_id)
        identity = AgentIdentity(
            endpoint=self.config.endpoint, worker_id=self.worker_id, layers=list(self.runtime.catalog),
            model=self.config.model, hardware=apb.Hardware(**self.runtime.hardware()),
        )
        self.sync = SyncLoop(self.config.server, identity, self._apply, state=state, on_applied=self._after_apply,
                             on_report_requested=self._evaluate_soon)
        # The last applied policy is live before the first request is served or the control plane answers.
        restored = await self.sync.restore()
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
