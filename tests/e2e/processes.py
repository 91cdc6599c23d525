"""Real `mixprec` processes for end-to-end tests: a control plane and workers (MiniLM unless named)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mixprec.localhost import free_port, wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, inference_pb2_grpc, policy_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import inference_pb2 as ipb

MIXPREC = [sys.executable, "-m", "mixprec.cli.main"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def healthy(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


class Proc:
    """A child process whose output goes to a log file (a pipe nobody reads would block it)."""

    def __init__(self, name: str, argv: list[str], logdir: pathlib.Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*MIXPREC, *argv], stdout=self._log, stderr=self._log, env=ENV)

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class ControlPlaneProc(Proc):
    def __init__(self, db: str, logdir: pathlib.Path, port: int | None = None, *extra: str):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__("control-plane", ["server", "--db", db, "--listen", self.address, *extra], logdir)
        wait_until(lambda: healthy(self.address) or not self.alive(), 60, "control plane to serve")
        assert self.alive(), self.log()
        self.channel = grpc.insecure_channel(self.address)
        self.policies = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.fleet = agent_pb2_grpc.FleetServiceStub(self.channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(self.channel)

    def workers(self, endpoint: str) -> dict[str, apb.WorkerStatus]:
        return {w.worker_id: w for w in self.fleet.GetFleet(apb.GetFleetRequest(endpoint=endpoint)).workers}

    def stop(self, timeout: float = 30) -> int:
        self.channel.close()
        return super().stop(timeout)


class WorkerProc(Proc):
    def __init__(self, worker_id: str, endpoint: str, server: str, logdir: pathlib.Path, state_dir: pathlib.Path,
                 *extra: str, eval_samples: int = 16, port: int | None = None, model: str = "minilm"):
        self.worker_id = worker_id
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        super().__init__(worker_id, [
            "worker", "--endpoint", endpoint, "--model", model, "--server", server, "--worker-id", worker_id,
            "--state-dir", str(state_dir), "--inference-listen", self.address, "--eval-samples", str(eval_samples),
            "--report-interval", "1", *extra,
        ], logdir)

    def wait_serving(self, timeout: float = 180) -> None:
        wait_until(lambda: healthy(self.address) or not self.alive(), timeout, f"{self.worker_id} to serve")
        assert self.alive(), self.log()

    def info(self) -> ipb.WorkerInfoResponse:
        with grpc.insecure_channel(self.address) as channel:
            return inference_pb2_grpc.InferenceServiceStub(channel).WorkerInfo(ipb.WorkerInfoRequest(), timeout=10)

    def embed(self, texts: list[str]) -> ipb.EmbedResponse:
        with grpc.insecure_channel(self.address) as channel:
            return inference_pb2_grpc.InferenceServiceStub(channel).Embed(ipb.EmbedRequest(texts=texts), timeout=60)
