"""Reliability of the agent loop with real processes: a control plane and real MiniLM workers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import pytest
import sqlalchemy as sa
from processes import ControlPlaneProc, WorkerProc, wait_until

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb

pytestmark = pytest.mark.slow

ENDPOINT = "embedder"
TEXT = ["how do I read a file line by line", "sort a dictionary by its values"]


def create_endpoint_and_connect(plane: ControlPlaneProc, *workers: WorkerProc) -> None:
    """The endpoint, without a catalog: the first worker reports it. Returns once every worker is in."""
    plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name=ENDPOINT, model="minilm"))
    for worker in workers:
        worker.wait_serving()
    wait_until(lambda: len(plane.workers(ENDPOINT)) == len(workers), 120, "workers to connect")


def add_policy(plane: ControlPlaneProc, parent: int, match: str, precision: str = "fp8") -> int:
    return plane.policies.CreatePolicy(pb.CreatePolicyRequest(
        endpoint=ENDPOINT, parent_version=parent, rules=[pb.Rule(match=match, precision=precision)])).version


def all_applied(plane: ControlPlaneProc, version: int, count: int):
    def check():
        try:
            workers = plane.workers(ENDPOINT)
        except grpc.RpcError:
            return False
        return len(workers) == count and all(w.connected and w.applied_version == version for w in workers.values())

    return check


def test_control_plane_sigkill_then_every_worker_reconnects_and_converges(tmp_path):
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    plane = ControlPlaneProc(db, tmp_path)
    workers = []
    try:
        workers = [WorkerProc(f"w{i}", ENDPOINT, plane.address, tmp_path, tmp_path / "state") for i in range(3)]
        create_endpoint_and_connect(plane, *workers)
        v1 = add_policy(plane, 0, "layers.*.mlp.*")
        v2 = add_policy(plane, v1, "layers.*")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v1, reason="first"))
        wait_until(all_applied(plane, v1, 3), 120, "v1 everywhere")

        port = plane.port
        plane.kill()  # no goodbye to anyone
        before = _table_counts(tmp_path / "cp.db")
        plane = ControlPlaneProc(db, tmp_path, port)
        assert _table_counts(tmp_path / "cp.db")["policy_versions"] == before["policy_versions"] == 2
        wait_until(all_applied(plane, v1, 3), 120, "workers back on the restarted control plane")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v2, reason="after restart"))
        wait_until(all_applied(plane, v2, 3), 120, "v2 everywhere after the restart")
        assert all(w.info().policy_version == v2 for w in workers)
        audit = [e.action for e in plane.fleet.ListAudit(apb.ListAuditRequest(endpoint=ENDPOINT)).entries]
        assert audit.count("activate") == 2 and "catalog.learn" in audit
    finally:
        for w in workers:
            w.stop()
        plane.stop()


def _table_counts(path) -> dict[str, int]:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                  for t in ("endpoints", "policy_versions", "activations", "audit_log")}
    engine.dispose()
    return counts


def test_worker_restarted_while_control_plane_is_down_serves_its_last_policy_then_catches_up(tmp_path):
    db = f"sqlite:///{tmp_path / 'cp.db'}"
    plane = ControlPlaneProc(db, tmp_path)
    state = tmp_path / "state"
    worker = WorkerProc("w1", ENDPOINT, plane.address, tmp_path, state)
    try:
        create_endpoint_and_connect(plane, worker)
        v1 = add_policy(plane, 0, "layers.*.mlp.*")
        v2 = add_policy(plane, v1, "layers.*")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v1))
        wait_until(all_applied(plane, v1, 1), 120, "v1 applied")
        reference = worker.embed(TEXT)

        port = plane.port
        plane.stop()
        worker.kill()
        worker = WorkerProc("w1", ENDPOINT, f"127.0.0.1:{port}", tmp_path, state, port=worker.port)
        worker.wait_serving()
        # No control plane anywhere: the worker serves v1 from its state dir, and serves it exactly.
        served = worker.embed(TEXT)
        assert served.policy_version == v1 == worker.info().policy_version
        assert [list(e.values) for e in served.embeddings] == [list(e.values) for e in reference.embeddings]
        assert {layer.precision for layer in worker.info().layers if ".mlp." in layer.layer} == {"fp8"}

        plane = ControlPlaneProc(db, tmp_path, port)
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v2))
        wait_until(all_applied(plane, v2, 1), 120, "the worker to catch up")
        assert worker.embed(TEXT).policy_version == v2
    finally:
        worker.stop()
        plane.stop()


def test_a_nack_leaves_the_worker_on_its_last_good_version_and_is_not_resent(tmp_path):
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path)
    # This worker refuses per-tensor FP8 (an operator's choice on hardware where it is too lossy).
    worker = WorkerProc("w1", ENDPOINT, plane.address, tmp_path, tmp_path / "state", "--precisions", "bf16,fp8")
    try:
        create_endpoint_and_connect(plane, worker)
        v1 = add_policy(plane, 0, "layers.*.mlp.*")
        v2 = add_policy(plane, v1, "layers.*", "fp8-tensor")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v1))
        wait_until(all_applied(plane, v1, 1), 120, "v1 applied")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v2))
        wait_until(lambda: plane.workers(ENDPOINT)["w1"].last_nack_version == v2, 60, "the NACK")
        status = plane.workers(ENDPOINT)["w1"]
        assert status.applied_version == v1 and "fp8-tensor" in status.last_nack
        assert worker.embed(TEXT).policy_version == v1
        shown = subprocess.run([sys.executable, "-m", "mixprec.cli.main", "--server", plane.address, "fleet", ENDPOINT],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert f"v{v2}: " in shown and "fp8-tensor" in shown
        wait_until(lambda: worker.log().count("refusing v2") >= 1, 10, "refusal in the log")
        time.sleep(6)  # longer than the control plane's re-read interval: no retry loop
        assert worker.log().count("refusing v2") == 1
    finally:
        worker.stop()
        plane.stop()


def test_fifty_policy_changes_under_steady_traffic_fail_no_request_and_never_mix(tmp_path):
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path)
    worker = WorkerProc("w1", ENDPOINT, plane.address, tmp_path, tmp_path / "state", eval_samples=4)
    try:
        create_endpoint_and_connect(plane, worker)
        v1 = add_policy(plane, 0, "layers.*.attention.*")
        v2 = add_policy(plane, v1, "layers.*.mlp.*")
        references = {}
        for version in (v1, v2):
            plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=version))
            wait_until(all_applied(plane, version, 1), 60, f"v{version}")
            references[version] = [list(e.values) for e in worker.embed(TEXT).embeddings]
        assert references[v1] != references[v2]

        responses, failures, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    reply = worker.embed(TEXT)
                    responses.append((reply.policy_version, [list(e.values) for e in reply.embeddings]))
                except grpc.RpcError as err:
                    failures.append(err)

        threads = [threading.Thread(target=traffic) for _ in range(2)]
        for t in threads:
            t.start()
        for change in range(50):
            version = v1 if change % 2 == 0 else v2
            served_before = len(responses)
            plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=version))
            # The next change waits until traffic has been served on this one: every change happens under load.
            wait_until(lambda v=version, n=served_before: any(r[0] == v for r in responses[n:]), 30,
                       f"change {change} to be served", poll=0.005)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not failures
        assert len(responses) >= 50
        for version, vectors in responses:
            assert vectors == references[version], f"a response tagged v{version} is not v{version}'s output"
    finally:
        worker.stop()
        plane.stop()


def test_a_rollback_is_applied_while_the_worker_is_in_the_middle_of_evaluating_the_version_it_leaves(tmp_path):
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path)
    # 96 pairs: an evaluation long enough (12 batches) to be caught in the middle.
    worker = WorkerProc("w1", ENDPOINT, plane.address, tmp_path, tmp_path / "state", eval_samples=96)
    try:
        create_endpoint_and_connect(plane, worker)
        v1 = add_policy(plane, 0, "layers.*")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=ENDPOINT, version=v1, reason="incident begins"))
        wait_until(lambda: f"evaluating v{v1}" in worker.log(), 60, "the evaluation of v1 to start", poll=0.01)
        base = plane.fleet.Rollback(apb.RollbackRequest(endpoint=ENDPOINT, to_base=True, reason="incident"))
        wait_until(all_applied(plane, base.active_version, 1), 60, "the rollback applied")
        wait_until(lambda: f"evaluation of v{v1} cancelled" in worker.log()
                   or f"evaluation of v{v1} discarded" in worker.log(), 60, "the v1 evaluation to stop")

        log = worker.log()
        # The rollback did not wait for the evaluation: it was applied before that evaluation ended,
        # and the number measured for a map no longer applied was never reported.
        assert log.index(f"applied v{base.active_version} (change)") < log.index(f"evaluation of v{v1} ")
        assert f"v{v1} quality:" not in log
        assert worker.info().policy_version == base.active_version
        assert all(layer.precision == "bf16" for layer in worker.info().layers)
    finally:
        worker.stop()
        plane.stop()
