"""`mixprec sweep --propose` against a running control plane: one new version, or a conflict."""

from __future__ import annotations

import json

import pytest
from support import RunningControlPlane

from mixprec.cli import sweep_cmds
from mixprec.cli.main import main
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import policy_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture
def plane(tmp_path):
    import grpc

    from worker.models.minilm import canonical_layer_map

    running = RunningControlPlane(f"sqlite:///{tmp_path / 'cp.db'}")
    running.policies = policy_pb2_grpc.PolicyServiceStub(grpc.insecure_channel(running.address))
    running.policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", layers=list(canonical_layer_map(6))))
    running.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0,
                                                         rules=[pb.Rule(match="layers.0.*", precision="fp8")]))
    yield running
    running.stop()


def sweep_argv(plane, tmp_path):
    return ["--server", plane.address, "sweep", "--model", "minilm", "--samples", "2", "--granularity", "group",
            "--max-drop", "inf", "--holdout", "2", "-o", str(tmp_path / "map.yaml"), "--propose", "emb"]


def test_propose_creates_exactly_one_version_with_the_sweep_beside_it(plane, tmp_path, capsys):
    assert main(sweep_argv(plane, tmp_path)) == 0
    assert "proposed emb policy version 2 (parent 1)" in capsys.readouterr().out
    versions = plane.policies.ListPolicies(pb.ListPoliciesRequest(endpoint="emb")).versions
    assert [v.version for v in versions] == [1, 2] and versions[1].has_artifact and not versions[0].has_artifact
    assert [r.match for r in versions[1].rules] == ["layers.*"]  # every group fits an unlimited budget
    assert main(["--server", plane.address, "--output", "json", "sweep", "show", "emb", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["granularity"] == "group" and len(shown["units"]) == 6
    assert shown["data"] == {"builtin": "docstrings"} and shown["confidence"] == 0.95  # the stored sweep says both
    assert main(["--server", plane.address, "sweep", "show", "emb", "2"]) == 0
    table = capsys.readouterr().out
    assert all(f"{u['name']} " in table for u in shown["units"])
    assert "combined check of 6 unit(s)" in table
    # Both drops of the chosen map: on the calibration pairs and on the held-out ones the sweep never saw.
    assert shown["holdout"]["pairs"] == 2 and shown["samples"] == 2 and shown["algorithm"] == "fast"
    assert f"calibration drop (2 pairs or windows): measured {shown['calibration_drop']:.6f}" in table
    assert f"held-out drop (2 texts the sweep never saw, 2 items): measured {shown['holdout']['drop']:.6f}" in table
    assert "note: 2 held-out item(s): too few to say" in table  # 2 pairs cannot speak for other text
    assert main(["--server", plane.address, "sweep", "show", "emb", "1"]) == 3


def test_a_concurrent_writer_makes_the_proposal_fail_with_a_conflict(plane, tmp_path, capsys, monkeypatch):
    original = sweep_cmds._check_endpoint

    def read_then_someone_else_writes(args, catalog):
        parent = original(args, catalog)
        plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=parent,
                                                           rules=[pb.Rule(match="layers.1.*", precision="fp8")]))
        return parent

    monkeypatch.setattr(sweep_cmds, "_check_endpoint", read_then_someone_else_writes)
    assert main(sweep_argv(plane, tmp_path)) == 4
    assert "latest is 2" in capsys.readouterr().err
    versions = plane.policies.ListPolicies(pb.ListPoliciesRequest(endpoint="emb")).versions
    assert [(v.version, v.has_artifact) for v in versions] == [(1, False), (2, False)]  # nothing overwritten
    assert (tmp_path / "map.yaml").exists()  # the sweep's result is still on disk


def test_propose_to_an_endpoint_with_another_catalog_fails_before_measuring(plane, tmp_path, capsys):
    plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name="other", layers=["head"]))
    argv = sweep_argv(plane, tmp_path)
    argv[-1] = "other"
    assert main(argv) == 2
    assert "different layer catalog" in capsys.readouterr().err
    assert not (tmp_path / "map.yaml").exists()
