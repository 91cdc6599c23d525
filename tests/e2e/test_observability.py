"""Metrics on /metrics of a running control plane and a real MiniLM worker, on the listeners the chart
uses, and every metric the chart's alerts and dashboard read is among them."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import urllib.request

import pytest
from processes import ControlPlaneProc, WorkerProc, healthy
from prometheus_client.parser import text_string_to_metric_families
from support import LAYERS, LightAgent, eventually

from mixprec.localhost import free_port, wait_until
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "mixprec"


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """Sample name -> [(labels, value)]."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, [])
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples, name: str, **labels) -> float | None:
    return next((v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items())), None)


def metric_names_read_by_the_chart() -> set[str]:
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    dashboard = json.loads((CHART / "dashboards" / "mixprec.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    return set(re.findall(r"\bmixprec_[a-z0-9_]+", rules + "\n".join(exprs)))


@pytest.mark.slow
def test_control_plane_and_worker_export_fleet_rollout_and_inference_metrics(tmp_path):
    metrics_port, health_port, worker_metrics, worker_health = (free_port() for _ in range(4))
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path, None,
                             "--metrics-listen", f"0.0.0.0:{metrics_port}", "--health-listen", f"127.0.0.1:{health_port}")
    worker = None
    try:
        assert healthy(f"127.0.0.1:{health_port}")  # the probes' plaintext listener
        plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name="emb", model="minilm"))
        worker = WorkerProc("w-1", "emb", plane.address, tmp_path, tmp_path / "state", "--metrics-listen",
                            f"0.0.0.0:{worker_metrics}", "--health-listen", f"127.0.0.1:{worker_health}",
                            eval_samples=8)
        worker.wait_serving()
        assert healthy(f"127.0.0.1:{worker_health}")
        wait_until(lambda: plane.policies.GetEndpoint(pb.GetEndpointRequest(name="emb")).layers, 60, "the catalog")
        plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="emb", parent_version=0,
                                                           rules=[pb.Rule(match="layers.0.mlp.*", precision="fp8")]))
        plane.rollouts.StartRollout(rpb.StartRolloutRequest(
            endpoint="emb", version=1, actor="e2e", steps=[rpb.RolloutStep(percent=100)],
            guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.5})))
        wait_until(lambda: worker.info().policy_version == 1, 60, "the worker on v1")
        for _ in range(3):
            assert worker.embed(["a query", "a document"]).policy_version == 1

        # A second endpoint whose (light) agent refuses its policy: a NACK with a reason.
        plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name="light", layers=LAYERS))
        plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="light", parent_version=0,
                                                           rules=[pb.Rule(match="*", precision="fp8")]))

        async def refused():
            agent = LightAgent(plane.address, "light", "l-1", refuse={1}).start()
            await eventually(lambda: agent.loop.connected.is_set(), 20, "the light agent")
            plane.fleet.Activate(apb.ActivateRequest(endpoint="light", version=1))
            await eventually(lambda: plane.workers("light")["l-1"].last_nack_version == 1, 20, "the NACK")
            await agent.stop()

        asyncio.run(refused())

        def plane_metrics():
            samples = scrape(metrics_port)
            done = value(samples, "mixprec_rollout_phase", endpoint="emb", phase="SUCCEEDED") == 1
            quality = value(samples, "mixprec_quality_delta", endpoint="emb", version="1", metric="cosine_to_base")
            # The light agent's goodbye reaches the gauges a moment after its stream ends.
            gone = value(samples, "mixprec_workers_disconnected", endpoint="light") == 1
            return samples if done and quality is not None and gone else None

        cp = wait_until(plane_metrics, 90, "the rollout to succeed on /metrics")
        assert value(cp, "mixprec_rollout_phase", endpoint="emb", phase="RUNNING") == 0
        assert value(cp, "mixprec_rollout_status", endpoint="emb") == 1  # Flagger: succeeded
        assert value(cp, "mixprec_rollout_step", endpoint="emb") == 1
        assert value(cp, "mixprec_rollout_steps", endpoint="emb") == 1
        assert value(cp, "mixprec_rollout_info", endpoint="emb", phase="SUCCEEDED", to_version="1") == 1
        assert value(cp, "mixprec_endpoint_active_version", endpoint="emb") == 1
        assert value(cp, "mixprec_workers_connected", endpoint="emb") == 1
        assert value(cp, "mixprec_worker_applied_version", endpoint="emb", worker="w-1") == 1
        assert -0.5 < value(cp, "mixprec_quality_delta", endpoint="emb", version="1", metric="cosine_to_base") <= 0
        assert value(cp, "mixprec_nacks_total", endpoint="light", reason="precision_not_allowed") == 1
        assert value(cp, "mixprec_policy_propagation_seconds_count", endpoint="emb") >= 1
        assert value(cp, "mixprec_workers_disconnected", endpoint="light") == 1  # its agent left

        w = scrape(worker_metrics)
        assert value(w, "mixprec_worker_applied_version", endpoint="emb", worker="w-1") == 1
        assert value(w, "mixprec_worker_control_plane_connected", endpoint="emb", worker="w-1") == 1
        assert value(w, "mixprec_inference_latency_seconds_count", endpoint="emb", policy_version="1") == 3

        exported = set(cp) | set(w)  # family names and sample names (_total, _bucket, ...)
        missing = sorted(metric_names_read_by_the_chart() - exported)
        assert not missing, f"the chart's alerts or dashboard read metrics nobody exports: {missing}"
    finally:
        if worker is not None:
            worker.stop()
        plane.stop()

