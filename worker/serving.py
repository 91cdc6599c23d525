"""The worker's InferenceService and the serving numbers it reports (throughput, p50/p99).

Every call is admitted first: a caller without an accepted client token is UNAUTHENTICATED when
the worker requires tokens, bytes that are no message of the method's type are INVALID_ARGUMENT
(decoded leniently, never a DecodeError), and a request over the configured work
(`InferenceLimits`) is INVALID_ARGUMENT naming the field and the limit, before any model work.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc

from mixprec.errors import InvalidArgument, MixprecError, ResourceExhausted, status_code
from mixprec.transport import BEARER, TOKEN_HEADER
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2 as ipb
from worker.admission import Admission, ServingLoad
from worker.client_tokens import ClientTokens
from worker.embed_batching import EmbedBatcher
from worker.sampling import Sampling, TextStream, sampling_from

MAX_TEXTS = 256
MAX_TEXT_CHARS = 20_000
MAX_NEW_TOKENS = 1024
DEFAULT_NEW_TOKENS = 32
SERVICE = ipb.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclass(frozen=True)
class InferenceLimits:
    """The most work one request may ask for (`mixprec worker --max-embed-chars/--max-generate-tokens`)."""

    max_embed_chars: int = 65_536      # all of an Embed's texts together (texts x length)
    max_generate_tokens: int = 2_048   # a Generate's prompt tokens plus the tokens it asks for


@dataclass(frozen=True)
class Capacity:
    """How much a worker takes at once (`mixprec worker --max-inflight/--max-queue/--embed-batch/--embed-wait-ms`)."""

    max_inflight: int = 4      # Generate requests running (each on its own inference thread)
    max_queue: int = 16        # Generate requests waiting for one of those; beyond: RESOURCE_EXHAUSTED
    embed_batch: int = 32      # texts of different callers' Embed requests computed together
    embed_wait_ms: float = 5.0  # the longest an Embed waits for others to share its batch

    @property
    def embed_inflight(self) -> int:
        return self.embed_batch  # requests being batched or computed; as many again may wait


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


class _Undecodable:
    """What bytes that are no message of the method's type decode to (admit refuses them)."""


def _lenient(message_type):
    def decode(raw: bytes):
        try:
            return message_type.FromString(raw)
        except Exception:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return _Undecodable()

    return decode


def add_inference_servicer(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Registers InferenceService with lenient request decoding (the generated helper's would answer
    garbage bytes UNKNOWN with a DecodeError)."""
    methods = {
        "Embed": grpc.unary_unary_rpc_method_handler(
            servicer.Embed, _lenient(ipb.EmbedRequest), ipb.EmbedResponse.SerializeToString),
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate, _lenient(ipb.GenerateRequest), ipb.GenerateResponse.SerializeToString),
        "WorkerInfo": grpc.unary_unary_rpc_method_handler(
            servicer.WorkerInfo, _lenient(ipb.WorkerInfoRequest), ipb.WorkerInfoResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))


def _bearer(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TOKEN_HEADER:
            text = value if isinstance(value, str) else value.decode("latin-1")
            return text[len(BEARER):].strip() if text.startswith(BEARER) else text.strip()
    return ""


class InferenceServicer:
    def __init__(self, runtime, stats: ServingStats, executor: Executor, endpoint: str, worker_id: str,
                 metrics=None, clients: ClientTokens | None = None, limits: InferenceLimits = InferenceLimits(),
                 capacity: Capacity = Capacity(), load: ServingLoad | None = None):
        self._clients = clients  # None: no tokens required (loopback, or --inference-auth off)
        self._limits = limits
        self._runtime = runtime
        self._metrics = metrics
        self._stats = stats
        self._executor = executor
        self._endpoint = endpoint
        self._worker_id = worker_id
        self.load = load or ServingLoad()
        self.generations = Admission(capacity.max_inflight, capacity.max_queue, "generations", self.load)
        self.embeds = Admission(capacity.embed_inflight, capacity.max_queue, "embed requests", self.load,
                                "--embed-batch/--max-queue")
        self.embedder = EmbedBatcher(runtime.embed_many, executor, capacity.embed_batch,
                                     capacity.embed_wait_ms / 1000)
        self.stopped_early = 0  # generations that stopped before their end because the caller went away

    async def _admit(self, request, context) -> None:
        """Refuses (aborts) callers without an accepted token, then bytes that are no request: as on the
        control plane, nothing of an unauthenticated caller's request is looked at."""
        if self._clients is not None:
            refusal = self._clients.refusal(_bearer(context))
            if refusal is not None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "request: is not a valid protobuf message of this method's type")

    @staticmethod
    async def _slot(admission: Admission, context) -> None:
        try:
            await admission.acquire()
        except ResourceExhausted as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))

    async def Embed(self, request: ipb.EmbedRequest, context) -> ipb.EmbedResponse:
        await self._admit(request, context)
        texts = list(request.texts)
        if not texts:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "texts: give at least one text")
        if len(texts) > MAX_TEXTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"texts: {len(texts)} texts; the limit is {MAX_TEXTS}")
        too_long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
        if too_long is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"texts[{too_long}]: {len(texts[too_long])} characters; the limit is {MAX_TEXT_CHARS}")
        total = sum(map(len, texts))
        if total > self._limits.max_embed_chars:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"texts: {len(texts)} texts of {total} characters in all; the limit is "
                                f"{self._limits.max_embed_chars} (mixprec worker --max-embed-chars)")
        await self._slot(self.embeds, context)
        started = time.perf_counter()
        try:
            vectors, version = await self.embedder.embed(texts)
        except MixprecError as err:  # e.g. Embed on a decoder
            await context.abort(status_code(err), str(err))
        finally:
            self.embeds.release()
        elapsed = time.perf_counter() - started
        self._stats.observe(elapsed, len(texts))
        if self._metrics is not None:
            self._metrics.served(version, elapsed)
        return ipb.EmbedResponse(embeddings=[ipb.Embedding(values=v) for v in vectors], policy_version=version)

    async def Generate(self, request: ipb.GenerateRequest, context):
        await self._admit(request, context)
        max_tokens = request.max_tokens or DEFAULT_NEW_TOKENS
        if not 1 <= max_tokens <= MAX_NEW_TOKENS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"max_tokens: {max_tokens}; it must be 1 to {MAX_NEW_TOKENS}")
        if len(request.prompt) > MAX_TEXT_CHARS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"prompt: {len(request.prompt)} characters; the limit is {MAX_TEXT_CHARS}")
        try:
            sampling = sampling_from(request, self._runtime.vocab_size)
        except InvalidArgument as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        await self._slot(self.generations, context)
        jobs: list[asyncio.Future] = []
        gone = threading.Event()
        try:
            async for response in self._generate(request.prompt, max_tokens, sampling, gone, jobs, context):
                yield response
        finally:
            gone.set()  # a caller that went away (cancelled, deadline) stops the generation at its next token
            if not jobs or jobs[0].done():
                self.generations.release()
            else:  # the slot is free once the thread is
                jobs[0].add_done_callback(lambda _: self.generations.release())

    async def _generate(self, prompt: str, max_tokens: int, sampling: Sampling, gone: threading.Event,
                        jobs: list, context):
        """The responses of one admitted generation (its thread's future goes into `jobs`)."""
        loop = asyncio.get_running_loop()
        try:
            prompt_ids = await loop.run_in_executor(self._executor, self._runtime.encode, prompt, max_tokens)
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        if len(prompt_ids) + max_tokens > self._limits.max_generate_tokens:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"prompt: {len(prompt_ids)} tokens plus max_tokens {max_tokens}; the limit is "
                                f"{self._limits.max_generate_tokens} (mixprec worker --max-generate-tokens)")
        pieces: asyncio.Queue = asyncio.Queue()
        text = TextStream(self._runtime.decode, sampling.stop)

        def on_token(token: int, version: int) -> bool:
            # On the inference thread: the text is decoded here, a short window per token, off the event loop.
            piece = text.push(token)
            loop.call_soon_threadsafe(pieces.put_nowait, (token, piece, version))
            if gone.is_set():
                self.stopped_early += 1
                return True
            return text.stopped

        started = time.perf_counter()
        job = loop.run_in_executor(self._executor, self._runtime.generate, prompt_ids, max_tokens, on_token, sampling)
        job.add_done_callback(lambda _: pieces.put_nowait(None))  # done callbacks run on the loop
        jobs.append(job)
        while (item := await pieces.get()) is not None:
            token, piece, version = item
            yield ipb.GenerateResponse(text=piece, token_ids=[token], policy_version=version)
        try:
            generation, version = await job
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        tail = text.finish()  # a character left unfinished at the end: as decoding all tokens gives it
        if tail:
            yield ipb.GenerateResponse(text=tail, policy_version=version)
        elapsed = time.perf_counter() - started
        decoded = max(len(generation.tokens) - 1, 0)  # the first token comes out of the prefill
        self._stats.observe(elapsed, len(generation.tokens))
        self._stats.observe_generation(generation.prompt_tokens, generation.prefill_seconds, decoded,
                                       generation.decode_seconds)
        if self._metrics is not None:
            self._metrics.served(version, elapsed)
        yield ipb.GenerateResponse(
            policy_version=version, done=True, prompt_tokens=generation.prompt_tokens,
            generated_tokens=len(generation.tokens), finish_reason=_finish_reason(generation, text, self._runtime),
            prefill_tokens_per_second=generation.prompt_tokens / max(generation.prefill_seconds, 1e-9),
            decode_tokens_per_second=decoded / generation.decode_seconds if generation.decode_seconds > 0 else 0.0)

    async def WorkerInfo(self, request: ipb.WorkerInfoRequest, context) -> ipb.WorkerInfoResponse:
        await self._admit(request, context)
        return ipb.WorkerInfoResponse(
            endpoint=self._endpoint,
            worker_id=self._worker_id,
            policy_version=self._runtime.version,
            layers=[ipb.LayerState(layer=layer, precision=p, kernel=k) for layer, p, k in self._runtime.layer_states()],
            resident_bytes=self._runtime.resident_bytes(),
        )


def _finish_reason(generation, text: TextStream, runtime) -> str:
    if text.stopped:
        return "stop"
    return "eos" if generation.tokens and generation.tokens[-1] in runtime.model.decoder.eos else "length"
