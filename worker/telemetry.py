"""The worker's Prometheus metrics: its applied policy version, its stream, and inference latency.

Names follow the control plane's (`mixprec_` prefix, `_seconds` histograms, `_total` counters), so
one dashboard reads both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, endpoint: str, worker_id: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.endpoint, self.worker_id = endpoint, worker_id
        self._applied = Gauge("mixprec_worker_applied_version", "Policy version this worker serves now",
                              ["endpoint", "worker"], registry=self.registry)
        self._connected = Gauge("mixprec_worker_control_plane_connected",
                                "1 while the stream to the control plane is up", ["endpoint", "worker"],
                                registry=self.registry)
        self.inference_latency = Histogram(
            "mixprec_inference_latency_seconds", "Inference request latency, by the policy version that served it",
            ["endpoint", "policy_version"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )

    def watch(self, applied_version, connected) -> None:
        """Read at scrape time: `applied_version()` -> int, `connected()` -> bool."""
        self._applied.labels(self.endpoint, self.worker_id).set_function(applied_version)
        self._connected.labels(self.endpoint, self.worker_id).set_function(lambda: 1.0 if connected() else 0.0)

    def served(self, version: int, seconds: float) -> None:
        self.inference_latency.labels(self.endpoint, str(version)).observe(seconds)
