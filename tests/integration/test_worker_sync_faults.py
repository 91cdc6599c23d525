"""A worker's sync never ends silently: a bad state file is set aside with one log line and the worker
syncs again; a state path it cannot write is logged and sync goes on; any exception in the loop is
logged and the loop starts over. Light agents against a real control plane on port 0."""

from __future__ import annotations

import asyncio
import logging

import pytest
from support import LightAgent, RunningControlPlane, eventually, migrated_sqlite, rules, stubs

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from worker.state import StateStore

LAYERS = ["layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]
MAP = '{"layers.0.mlp.up_proj": "fp8", "layers.0.mlp.down_proj": "fp8"}'


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    running = RunningControlPlane(migrated_sqlite(tmp_path_factory.mktemp("sync")))
    running.policy, running.fleet = stubs(running.address)
    yield running
    running.stop()


def endpoint(plane, name: str) -> None:
    """An endpoint with v1 active and v2 stored."""
    plane.policy.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=LAYERS))
    plane.policy.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, rules=rules(("layers.*.mlp.*", "fp8"))))
    plane.policy.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, parent_version=1, rules=rules(("*", "fp8-tensor"))))
    plane.fleet.Activate(apb.ActivateRequest(endpoint=name, version=1))


def complaints(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("worker")]


BAD_STATE = {
    "huge-float": ('{{"endpoint": "{e}", "version": 1e400, "precision_map": {m}}}', "version is inf"),
    "deep": ("[" * 100_000 + "]" * 100_000, "nests 100000 levels deep; the limit is 2"),
    "negative": ('{{"endpoint": "{e}", "version": -1, "precision_map": {m}}}', "version is -1"),
    "beyond-int32": ('{{"endpoint": "{e}", "version": 2147483648, "precision_map": {m}}}', "version is 2147483648"),
    "text-version": ('{{"endpoint": "{e}", "version": "7", "precision_map": {m}}}', "version is '7'"),
    "map-of-lists": ('{{"endpoint": "{e}", "version": 3, "precision_map": {{"a": [1]}}}}', "nests 3 levels deep"),
    "nan": ('{{"endpoint": "{e}", "version": NaN, "precision_map": {m}}}', "NaN is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATE))
def test_a_bad_state_file_is_set_aside_with_one_log_line_and_the_worker_syncs(plane, tmp_path, caplog, case):
    name = f"state-{case}"
    endpoint(plane, name)
    text, problem = BAD_STATE[case]
    store = StateStore(tmp_path, name, "w1")
    store.path.write_text(text.format(e=name, m=MAP))

    async def scenario():
        agent = LightAgent(plane.address, name, "w1", layers=LAYERS, state_dir=tmp_path)
        with caplog.at_level(logging.INFO, logger="worker"):
            assert await agent.loop.restore() is None  # at base precision
        agent.start()
        await eventually(lambda: agent.applied == [1] and agent.loop.connected.is_set(), what="synced to v1")
        plane.fleet.Activate(apb.ActivateRequest(endpoint=name, version=2))
        await eventually(lambda: agent.applied == [1, 2], what="v2 applied")
        await agent.stop()

    asyncio.run(scenario())
    (aside,) = tmp_path.glob(f"{store.path.name}.bad-*")
    assert aside.read_text() == text.format(e=name, m=MAP)  # kept for whoever looks into it
    (line,) = [r.getMessage() for r in complaints(caplog)]
    assert str(store.path) in line and problem in line and f"set aside as {aside.name}" in line, line
    assert store.load().version == 2  # the new assignment saved in its place


def test_an_unwritable_state_path_is_logged_and_sync_goes_on(plane, tmp_path, caplog):
    endpoint(plane, "unwritable")
    (tmp_path / "file").write_text("not a directory")
    state_dir = tmp_path / "file" / "state"  # mkdir fails even as root

    async def scenario():
        agent = LightAgent(plane.address, "unwritable", "w1", layers=LAYERS, state_dir=state_dir).start()
        await eventually(lambda: agent.applied == [1], what="v1 applied")
        plane.fleet.Activate(apb.ActivateRequest(endpoint="unwritable", version=2))
        await eventually(lambda: agent.applied == [1, 2] and agent.loop.connected.is_set(), what="v2 applied")
        await agent.stop()

    with caplog.at_level(logging.INFO, logger="worker"):
        asyncio.run(scenario())
    # (The worker's token file under the same path is complained about apart: worker.credentials.)
    lines = [r.getMessage() for r in complaints(caplog) if r.getMessage().startswith("cannot save")]
    assert len(lines) == 2 and all(f"{state_dir}" in line and "a restart starts without it" in line for line in lines)
    assert lines[0].startswith("cannot save v1") and lines[1].startswith("cannot save v2")


def test_an_exception_in_the_sync_loop_is_logged_and_the_loop_starts_over(plane, caplog):
    endpoint(plane, "crash")

    async def scenario():
        agent = LightAgent(plane.address, "crash", "w1", layers=LAYERS)
        report = agent.loop._on_applied
        crashes = []

        async def after_apply(version, precision_map):  # the worker's own step after an apply
            if not crashes:
                crashes.append(version)
                raise RuntimeError("evaluation could not start")
            await report(version, precision_map)

        agent.loop._on_applied = after_apply
        agent.start()
        await eventually(lambda: crashes == [1], what="the injected failure")
        await eventually(lambda: agent.loop.connected.is_set(), what="connected again")
        plane.fleet.Activate(apb.ActivateRequest(endpoint="crash", version=2))
        await eventually(lambda: agent.applied == [1, 2], what="v2 applied after the failure")
        await agent.stop()

    with caplog.at_level(logging.INFO, logger="worker"):
        asyncio.run(scenario())
    (record,) = complaints(caplog)
    assert "RuntimeError: evaluation could not start" in record.getMessage() and "starting over" in record.getMessage()
    assert record.exc_info is not None  # with its traceback
