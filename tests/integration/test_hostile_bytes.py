"""Escape sequences from agents and operators, shown by the real CLI and the dashboard of a real control
plane on port 0: neutralised (visible as `\\x1b`, never sent to the terminal or the page raw), and JSON
output still carries the exact text."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from support import LAYERS, RunningControlPlane, eventually, fleet_of, migrated_sqlite, rules, stubs

from mixprec.cli.main import main
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from worker.sync import AgentIdentity, Backoff, SyncLoop

# Erase the line, move up, rewrite the title (OSC), conceal (SGR 8), carriage return, bidi override, C1 CSI.
NACK = "cannot run fp8\x1b[2K\x1b[1A\rall layers applied\x1b]0;owned\x07"
WORKER = "w1"  # worker ids are refused unless printable
ADDRESS = "10.0.0.7:50052\x1b[1A"
REMARK = "alice\x1b[2K\u202e"
REASON = "routine\r\x1b[2Kapproved by security\x9b1A"
MESSAGE = "mlp to fp8\nforged: v9 by admin"


def raw_controls(text: str, allowed: str = "\n") -> list[str]:
    """Every character a terminal or a browser would act on (printable Unicode is fine)."""
    return sorted({ch for ch in text if not ch.isprintable() and ch not in allowed})


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    running = RunningControlPlane(migrated_sqlite(tmp_path_factory.mktemp("bytes")), http_listen="127.0.0.1:0")
    policy, fleet = stubs(running.address)
    policy.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=LAYERS, model="minilm"))
    policy.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", rules=rules(("layers.*.mlp.*", "fp8")),
                                               author="bo", message=MESSAGE))
    fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1, actor=REMARK, reason=REASON))

    async def refuse(version, precision_map):
        raise ValueError(NACK)

    async def nacked():
        identity = AgentIdentity("emb", WORKER, list(LAYERS), inference_address=ADDRESS)
        agent = SyncLoop(running.address, identity, refuse, backoff=Backoff(initial=0.05, maximum=0.2))
        task = asyncio.ensure_future(agent.run())
        await eventually(lambda: fleet_of(fleet, "emb").get(WORKER) is not None
                         and fleet_of(fleet, "emb")[WORKER].last_nack, what="the NACK stored")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(nacked())
    yield running
    running.stop()


@pytest.fixture
def cli(plane, capsys):
    def run(*argv: str) -> str:
        code = main(["--server", plane.address, *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert raw_controls(out) == [] and raw_controls(err) == [], (argv, out, err)
        return out

    return run


def test_fleet_shows_a_hostile_nack_worker_id_and_address_as_escapes(cli):
    out = cli("fleet", "emb")
    assert "cannot run fp8\\x1b[2K\\x1b[1A\\ral" in out  # the table's cell, cut at 60 characters
    assert "10.0.0.7:50052\\x1b[1A" not in out  # (the table has no address column; JSON has)
    (worker,) = json.loads(cli("--output", "json", "fleet", "emb"))
    assert (worker["worker_id"], worker["last_nack"]["error"], worker["inference_address"]) == (WORKER, NACK, ADDRESS)


def test_audit_shows_a_hostile_remark_and_reason_as_escapes(cli):
    out = cli("audit", "emb")
    assert "alice\\x1b[2K\\u202e" in out and "routine\\r\\x1b[2Kapproved by security\\x9b1A" in out
    entries = json.loads(cli("--output", "json", "audit", "emb"))
    activation = next(e for e in entries if e["action"] == "activate")
    assert REMARK in activation["actor"] and activation["reason"] == REASON


def test_policy_history_keeps_a_message_on_its_own_row(cli):
    versions = json.loads(cli("--output", "json", "policy", "history", "emb"))
    assert versions[0]["message"] == MESSAGE
    out = cli("policy", "history", "emb")
    assert "mlp to fp8\\nforged: v9 by admin" in out and len(out.strip().splitlines()) == 1 + len(versions)
    assert "mlp to fp8\\nforged" in cli("policy", "show", "emb", "1")


def test_printable_unicode_is_kept_as_is(plane, cli):
    policy, fleet = stubs(plane.address)
    policy.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=1, rules=rules(("*", "fp8"))))
    fleet.Activate(apb.ActivateRequest(endpoint="emb", version=2, actor="zoë", reason="café ☕ 🙂"))
    out = cli("audit", "emb")
    assert "café ☕ 🙂" in out and "zoë" in out
    assert "café ☕ 🙂" in cli("--output", "json", "audit", "emb")


def test_the_dashboard_shows_them_as_escapes_too(plane):
    url = f"http://127.0.0.1:{plane.plane.dashboard.http.port}/endpoints/emb"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"accept": "text/html"}), timeout=10) as reply:
        page = reply.read().decode()
    assert raw_controls(page, allowed="\n\t") == []
    assert 'class="badge' in page and "&lt;span" not in page  # macros' HTML is not escaped a second time
    assert "cannot run fp8\\x1b[2K" in page and "\\u202e" in page
