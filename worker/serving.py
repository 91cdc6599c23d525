"""The worker's InferenceService and the serving numbers it reports (throughput, p50/p99)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor

import grpc

from mixprec.errors import MixprecError, status_code
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc

MAX_TEXTS = 256
MAX_TEXT_CHARS = 20_000
MAX_NEW_TOKENS = 1024
DEFAULT_NEW_TOKENS = 32


class ServingStats:
    """Latencies and counts of the requests served since the last report (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._items = 0
        self._phases = [0, 0.0, 0, 0.0]  # prefill tokens, prefill seconds, decode tokens, decode seconds
        self._since = time.monotonic()

    def observe(self, seconds: float, items: int) -> None:
        with self._lock:
            self._latencies.append(seconds)
            self._items += items

    def observe_generation(self, prefill_tokens: int, prefill_seconds: float, decode_tokens: int,
                           decode_seconds: float) -> None:
        """A generation's two phases, for prefill and decode tokens/s (decode: tokens after the first)."""
        with self._lock:
            for i, value in enumerate((prefill_tokens, prefill_seconds, decode_tokens, decode_seconds)):
                self._phases[i] += value

    def take(self, version: int) -> apb.Report | None:
        """The report for the window that ends now, or None when nothing was served."""
        with self._lock:
            latencies, items, since, phases = self._latencies, self._items, self._since, self._phases
            self._latencies, self._items, self._since, self._phases = [], 0, time.monotonic(), [0, 0.0, 0, 0.0]
        if not latencies:
            return None
        window = max(time.monotonic() - since, 1e-9)
        ordered = sorted(latencies)
        metrics = {"items_per_second": items / window}
        if phases[1] > 0:
            metrics["prefill_tokens_per_second"] = phases[0] / phases[1]
        if phases[3] > 0:
            metrics["decode_tokens_per_second"] = phases[2] / phases[3]
        return apb.Report(
            kind=apb.Report.SERVING,
            version=version,
            throughput=len(latencies) / window,
            latency_p50_ms=_percentile(ordered, 50) * 1000,
            latency_p99_ms=_percentile(ordered, 99) * 1000,
            requests=len(latencies),
            metrics=metrics,
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
        try:
            vectors, version = await asyncio.get_running_loop().run_in_executor(self._executor, self._runtime.embed,
                                                                                texts)
        except MixprecError as err:  # e.g. Embed on a decoder
            await context.abort(status_code(err), str(err))
        elapsed = time.perf_counter() - started
        self._stats.observe(elapsed, len(texts))
        if self._metrics is not None:
            self._metrics.served(version, elapsed)
        return ipb.EmbedResponse(embeddings=[ipb.Embedding(values=v) for v in vectors], policy_version=version)

    async def Generate(self, request: ipb.GenerateRequest, context):
        max_tokens = request.max_tokens or DEFAULT_NEW_TOKENS
        if max_tokens > MAX_NEW_TOKENS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"max_tokens: {max_tokens}; the limit is {MAX_NEW_TOKENS}")
        if len(request.prompt) > MAX_TEXT_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"prompt: {len(request.prompt)} characters; the limit is {MAX_TEXT_CHARS}")
        loop = asyncio.get_running_loop()
        try:
            prompt_ids = await loop.run_in_executor(self._executor, self._runtime.encode, request.prompt, max_tokens)
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        tokens: asyncio.Queue = asyncio.Queue()
        started = time.perf_counter()
        job = loop.run_in_executor(self._executor, self._runtime.generate, prompt_ids, max_tokens,
                                   lambda token, version: loop.call_soon_threadsafe(tokens.put_nowait, (token, version)))
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, None))
        generated: list[int] = []
        text = ""
        while (item := await tokens.get()) is not None:
            token, version = item
            generated.append(token)
            # Decoding the whole text each time keeps a character split across tokens whole.
            full = self._runtime.decode(generated)
            piece, text = full[len(text):], full
            yield ipb.GenerateResponse(text=piece, token_ids=[token], policy_version=version)
        try:
            generation, version = await job
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        elapsed = time.perf_counter() - started
        decoded = max(len(generation.tokens) - 1, 0)  # the first token comes out of the prefill
        self._stats.observe(elapsed, len(generation.tokens))
        self._stats.observe_generation(generation.prompt_tokens, generation.prefill_seconds, decoded,
                                       generation.decode_seconds)
        if self._metrics is not None:
            self._metrics.served(version, elapsed)
        yield ipb.GenerateResponse(
            policy_version=version, done=True, prompt_tokens=generation.prompt_tokens,
            generated_tokens=len(generation.tokens),
            prefill_tokens_per_second=generation.prompt_tokens / max(generation.prefill_seconds, 1e-9),
            decode_tokens_per_second=decoded / generation.decode_seconds if generation.decode_seconds > 0 else 0.0)

    async def WorkerInfo(self, request: ipb.WorkerInfoRequest, context) -> ipb.WorkerInfoResponse:
        return ipb.WorkerInfoResponse(
            endpoint=self._endpoint,
            worker_id=self._worker_id,
            policy_version=self._runtime.version,
            layers=[ipb.LayerState(layer=layer, precision=p, kernel=k) for layer, p, k in self._runtime.layer_states()],
            resident_bytes=self._runtime.resident_bytes(),
        )
