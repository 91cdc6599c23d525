"""The story every `mixprec demo` tells (`tell`): a control plane and real workers as processes of their
own under steady traffic, the sweep's policy rolled out under guardrails, a policy that goes too far
rolled back automatically, a one-call rollback, and a summary table. Each model's demo (a `Story`)
supplies what differs: its traffic, its sweep, its guardrails and its columns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

import grpc

from mixprec.cli import output
from mixprec.cli.fleet_cmds import worker_rows
from mixprec.cli.policy_cmds import rules_proto
from mixprec.localhost import free_port, wait_until
from mixprec.policy import compact_rules
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def spawn(workdir: str, name: str, *argv: str) -> subprocess.Popen:
    log = open(os.path.join(workdir, f"{name}.log"), "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([sys.executable, "-m", "mixprec.cli.main", *argv], stdout=log, stderr=log,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class Story:
    """One endpoint, its workers and the control plane they talk to, for the length of a demo."""

    endpoint = ""
    model = ""
    workers: tuple[str, ...] = ()
    fleet_columns: list[str] = []

    def __init__(self, workdir: str, eval_samples: int, device: str = "auto", dtype: str = "auto"):
        self.workdir, self.eval_samples = workdir, eval_samples
        self.device, self.dtype = device, dtype  # the workers' and the sweep's (worker.device)
        self.summary: list[dict] = []

    def load_model(self):
        """The demo's model for its in-process sweep, where its workers run it."""
        from worker.models import load_model

        return load_model(self.model, dtype=self.dtype, device=self.device)

    # --- processes ---------------------------------------------------------------------------------

    def start_control_plane(self, stack: ExitStack, with_dashboard: bool = False) -> None:
        step(f"control plane on sqlite:///{self.workdir}/mixprec.db")
        self.address = f"127.0.0.1:{free_port()}"
        argv = ["server", "--db", f"sqlite:///{self.workdir}/mixprec.db", "--listen", self.address]
        dashboard = f"127.0.0.1:{free_port()}"
        stack.callback(terminate, spawn(self.workdir, "control-plane", *argv,
                                        *(["--http-listen", dashboard] if with_dashboard else [])))
        channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(channel).result(timeout=60)
        if with_dashboard:
            print(f"    dashboard: http://{dashboard}/ (open it to watch the demo live)", flush=True)
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.fleet = agent_pb2_grpc.FleetServiceStub(channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(channel)
        self.policies.CreateEndpoint(pb.CreateEndpointRequest(name=self.endpoint, model=self.model, actor="demo"))

    def start_workers(self, stack: ExitStack, timeout: float, waiting_for: str) -> list[str]:
        """Starts a worker process per id and waits until all are connected; returns their inference addresses."""
        addresses = []
        for worker_id in self.workers:
            address = f"127.0.0.1:{free_port()}"
            addresses.append(address)
            stack.callback(terminate, spawn(
                self.workdir, worker_id, "worker", "--endpoint", self.endpoint, "--model", self.model,
                "--server", self.address, "--worker-id", worker_id, "--state-dir",
                os.path.join(self.workdir, "state"), "--inference-listen", address,
                "--eval-samples", str(self.eval_samples), "--report-interval", "2",
                "--device", self.device, "--dtype", self.dtype))
        shown = -1

        def connected() -> bool:
            nonlocal shown
            count = sum(w.connected for w in self.fleet_now().workers)
            if count != shown:
                print(f"    {count}/{len(self.workers)} workers connected ({waiting_for})", flush=True)
                shown = count
            return count == len(self.workers)

        wait_until(connected, timeout, "workers to connect")
        return addresses

    # --- the fleet ---------------------------------------------------------------------------------

    def fleet_now(self) -> apb.GetFleetResponse:
        return self.fleet.GetFleet(apb.GetFleetRequest(endpoint=self.endpoint))

    def wait_every_worker(self, version: int, timeout: float, what: str) -> None:
        wait_until(lambda: all(w.applied_version == version for w in self.fleet_now().workers), timeout, what)

    def show_fleet(self, title: str) -> apb.GetFleetResponse:
        response = self.fleet_now()
        print(f"--- {title} (active v{response.active_version})")
        output.table(worker_rows(response), self.fleet_columns)
        return response

    # --- policies, rollouts, rollbacks -------------------------------------------------------------

    def propose(self, precision_map: dict[str, str], message: str, artifact: dict | None = None) -> tuple[int, int]:
        """The sweep's map as policy v1 (compact rules); returns (version, number of rules)."""
        spec = compact_rules(precision_map)
        version = self.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=self.endpoint, parent_version=0, rules=rules_proto(spec), author="demo", message=message,
            artifact_json=json.dumps(artifact, default=str) if artifact is not None else "",
        )).version
        return version, len(spec.rules)

    def watch_rollout(self, version: int, steps: list[rpb.RolloutStep], guardrails: rpb.Guardrails, limit: float,
                      poll: float, settle_timeout: float) -> tuple[rpb.Rollout, int, float]:
        """Starts a rollout and prints each state it passes through until it ends; returns (the rollout,
        the version every worker runs after it, seconds it took)."""
        started = time.monotonic()
        self.rollouts.StartRollout(rpb.StartRolloutRequest(endpoint=self.endpoint, version=version, actor="demo",
                                                           steps=steps, guardrails=guardrails))
        seen = None
        while True:
            current = self.rollouts.GetRollout(rpb.GetRolloutRequest(endpoint=self.endpoint))
            key = (current.state, current.current_step, len(current.new_version_workers))
            if key != seen:
                seen = key
                print(f"    [{rpb.RolloutState.Name(current.state)}] {current.message}", flush=True)
            if current.state != rpb.RUNNING:
                break
            if time.monotonic() - started > limit:
                raise RuntimeError(f"the rollout did not finish in {limit:.0f} s")
            time.sleep(poll)
        wanted = current.to_version if current.state == rpb.SUCCEEDED else current.from_version
        self.wait_every_worker(wanted, settle_timeout, "every worker on the outcome")
        return current, wanted, time.monotonic() - started

    def rollback_to_base(self, timeout: float) -> tuple[apb.ActivationResponse, float]:
        """The incident call: every worker back at base precision; returns (the answer, seconds to apply)."""
        step(f"incident: `mixprec rollback {self.endpoint} --to-base --reason ...`, one call, every worker")
        started = time.monotonic()
        rolled = self.fleet.Rollback(apb.RollbackRequest(endpoint=self.endpoint, reason="demo: incident drill",
                                                         to_base=True, actor="oncall"))
        self.wait_every_worker(rolled.active_version, timeout, "every worker at base")
        return rolled, time.monotonic() - started

    # --- the parts each model's demo tells its own way ----------------------------------------------

    def start(self, stack: ExitStack) -> None:
        """Control plane, workers and traffic, each stopped by `stack`."""
        raise NotImplementedError

    def sweep_and_propose(self) -> int:
        raise NotImplementedError

    def roll_out(self, version: int, label: str) -> rpb.Rollout:
        raise NotImplementedError

    def too_far(self, parent: int) -> tuple[int, str]:
        """A version the guardrails must refuse, and its label."""
        raise NotImplementedError

    def one_call_rollback(self) -> None:
        raise NotImplementedError

    def stop_traffic(self) -> tuple[bool, str]:
        """Stops the traffic; (whether it went as it should, what the summary says of it)."""
        raise NotImplementedError

    def epilogue(self) -> None:
        """Anything shown after the traffic stopped."""


def tell(story_type, eval_samples: int, keep: bool, prefix: str, device: str = "auto", dtype: str = "auto") -> int:
    """Tells the story in a fresh working directory and prints its summary; 0 when it went as it should:
    the sweep's policy succeeded, the one that went too far was rolled back, the traffic never failed."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    started = time.monotonic()
    story = story_type(workdir, eval_samples, device, dtype)
    with ExitStack() as stack:
        story.start(stack)
        proposed = story.sweep_and_propose()
        first = story.roll_out(proposed, "the sweep's policy")
        second = story.roll_out(*story.too_far(proposed))
        story.one_call_rollback()
        traffic_ok, headline = story.stop_traffic()
        story.epilogue()
    ok = first.state == rpb.SUCCEEDED and second.state == rpb.ROLLED_BACK and traffic_ok
    print(f"\nsummary ({headline}; {time.monotonic() - started:.0f}s in all):")
    output.table(story.summary)
    if keep:
        print(f"logs, database and everything else the demo wrote kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        print("error: the demo did not go as expected (see above)", file=sys.stderr)
    return 0 if ok else 1
