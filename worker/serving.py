"""The worker's InferenceService and the serving numbers it reports (throughput, p50/p99)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor

import grpc

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc

MAX_TEXTS = 256
MAX_TEXT_CHARS = 20_000


class ServingStats:
    """Latencies and counts of the requests served since the last report (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._items = 0
        self._since = time.monotonic()

    def observe(self, seconds: float, items: int) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self._items += items

    def take(self, version: int) -> apb.Report | None:
        """The report for the window that ends now, or None when nothing was served."""
        with self._lock:
            latencies, items, since = self._latencies, self._items, self._since
            self._latencies, self._items, self._since = [], 0, time.monotonic()
        if not latencies:
            return None
        window = max(time.monotonic() - since, 1e-9)
        ordered = sorted(latencies)
        return apb.Report(
            kind=apb.Report.SERVING,
            version=version,
            throughput=len(latencies) / window,
            latency_p50_ms=_percentile(ordered, 50) * 1000,
            latency_p99_ms=_percentile(ordered, 99) * 1000,
            requests=len(latencies),
            metrics={"items_per_second": items / window},
            window_seconds=window,
        )


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, runtime, stats: ServingStats, executor: Executor, endpoint: str, worker_id: str,
                 metrics=None):
        self._runtime = runtime
        self._metrics = metrics
        self._stats = stats
        self._executor = executor
        self._endpoint = endpoint
        self._worker_id = worker_id

    async def Embed(self, request: ipb.EmbedRequest, context) -> ipb.EmbedResponse:
        texts = list(request.texts)
        if not texts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts: give at least one text")
        if len(texts) > MAX_TEXTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts: {len(texts)} texts; the limit is {MAX_TEXTS}")
        too_long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
        if too_long is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"texts[{too_long}]: {len(texts[too_long])} characters; the limit is {MAX_TEXT_CHARS}")
        started = time.perf_counter()
        vectors, version = await asyncio.get_running_loop().run_in_executor(self._executor, self._runtime.embed, texts)
        elapsed = time.perf_counter() - started
        self._stats.observe(elapsed, len(texts))
        if self._metrics is not None:
            self._metrics.served(version, elapsed)
        return ipb.EmbedResponse(embeddings=[ipb.Embedding(values=v) for v in vectors], policy_version=version)

    async def WorkerInfo(self, request: ipb.WorkerInfoRequest, context) -> ipb.WorkerInfoResponse:
        return ipb.WorkerInfoResponse(
            endpoint=self._endpoint,
            worker_id=self._worker_id,
            policy_version=self._runtime.version,
            layers=[ipb.LayerState(layer=layer, precision=p, kernel=k) for layer, p, k in self._runtime.layer_states()],
            resident_bytes=self._runtime.resident_bytes(),
        )
