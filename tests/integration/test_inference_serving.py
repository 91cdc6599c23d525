"""The worker's InferenceService under load (issue 23): bounded places (RESOURCE_EXHAUSTED at once when
full), a cancelled Generate frees its place, seeded sampling, sampling values checked at the edge, and
Embed requests of different callers batched yet each answered with its own vectors at one map."""

from __future__ import annotations

import asyncio
import math
import threading

import grpc
import pytest

from mixprec import transport
from mixprec.cli.main import main
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc
from worker.agent import AgentConfig, WorkerAgent
from worker.serving import Capacity, InferenceLimits

LONG = 1000  # tokens: seconds of work for the tiny decoder, so a request is still running when looked at


@pytest.fixture(scope="module")
def decoder():
    """The tiny decoder with a context long enough for LONG tokens."""
    from worker.engine import HybridEngine
    from worker.models.decoder import decoder_model
    from worker.models.tiny import TINY_NAME, byte_tokenizer, tiny_module
    from worker.runtime import EmbedderRuntime

    model = decoder_model(TINY_NAME, tiny_module(max_positions=2048), byte_tokenizer(), None, "cpu")
    return EmbedderRuntime(model, HybridEngine(model.module, model.layer_map), None)


@pytest.fixture(scope="module")
def embedder():
    from worker.runtime import build_runtime

    return build_runtime("minilm", eval_samples=0)


def serving(runtime, scenario, capacity: Capacity | None = None):
    """Runs `scenario(stub, servicer)` against a worker's InferenceService on port 0."""
    config = AgentConfig(endpoint="e", model="m", server="127.0.0.1:1", inference_listen="127.0.0.1:0",
                         inference_limits=InferenceLimits(max_generate_tokens=2048), capacity=capacity or Capacity())

    async def run():
        agent = WorkerAgent(config, runtime)
        port = await agent.start_inference()
        channel = transport.aio_channel(f"127.0.0.1:{port}")
        try:
            await scenario(inference_pb2_grpc.InferenceServiceStub(channel), agent.servicer)
        finally:
            await channel.close()
            await agent._server.stop(0)

    asyncio.run(run())


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.005)


async def code_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        [_ async for _ in call]
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()


def test_a_full_worker_answers_resource_exhausted_at_once_and_the_queue_runs_in_turn(decoder):
    async def scenario(stub, servicer):
        running = stub.Generate(ipb.GenerateRequest(prompt="a", max_tokens=LONG), timeout=120)
        await running.read()  # running now: the one place is taken
        queued = stub.Generate(ipb.GenerateRequest(prompt="b", max_tokens=3), timeout=120)
        waiting = asyncio.ensure_future(code_of(queued))
        await until(lambda: servicer.generations.waiting == 1)
        code, details = await code_of(stub.Generate(ipb.GenerateRequest(prompt="c", max_tokens=3), timeout=120))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("worker busy: 1 generations running and 1 waiting")
        running.cancel()
        assert await waiting == (grpc.StatusCode.OK, "")  # the queued request got the freed place

    serving(decoder, scenario, Capacity(max_inflight=1, max_queue=1))


def test_cancelling_a_generation_stops_it_at_its_next_token_and_frees_its_place(decoder):
    async def scenario(stub, servicer):
        first = stub.Generate(ipb.GenerateRequest(prompt="a", max_tokens=LONG), timeout=120)
        await first.read()
        code, _ = await code_of(stub.Generate(ipb.GenerateRequest(prompt="b", max_tokens=2), timeout=120))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        await until(lambda: servicer.generations.inflight == 0)
        assert servicer.stopped_early == 1  # it stopped short of its LONG tokens
        responses = [r async for r in stub.Generate(ipb.GenerateRequest(prompt="b", max_tokens=2), timeout=120)]
        assert responses[-1].done and responses[-1].generated_tokens == 2

    serving(decoder, scenario, Capacity(max_inflight=1, max_queue=0))


def tokens_of(responses) -> list[int]:
    return [t for r in responses for t in r.token_ids]


def test_sampling_with_a_seed_is_reproducible_differs_across_seeds_and_top_k_1_is_greedy(decoder):
    async def scenario(stub, servicer):
        async def run(**sampling):
            request = ipb.GenerateRequest(prompt="def f(x):", max_tokens=40, **sampling)
            return [r async for r in stub.Generate(request, timeout=120)]

        greedy = await run()
        seven, again, eight = (await run(temperature=1.0, seed=7), await run(temperature=1.0, seed=7),
                               await run(temperature=1.0, seed=8))
        assert tokens_of(seven) == tokens_of(again)
        assert tokens_of(seven) != tokens_of(eight) and tokens_of(seven) != tokens_of(greedy)
        assert tokens_of(await run(temperature=1.5, top_k=1, seed=3)) == tokens_of(greedy)
        assert tokens_of(await run(temperature=1.0, top_p=1e-6, seed=4)) == tokens_of(greedy)
        nucleus = await run(temperature=0.8, top_p=0.9, top_k=50, seed=11)
        assert nucleus[-1].done and nucleus[-1].finish_reason in ("length", "eos")
        text = decoder.decode(tokens_of(greedy))
        stop = next(text[i:i + 2] for i in range(3, len(text)) if "\ufffd" not in text[i:i + 2])
        stopped = await run(stop=[stop, "never-in-it"])
        assert "".join(r.text for r in stopped) == text[:text.index(stop)]
        assert stopped[-1].finish_reason == "stop"
        assert "".join(r.text for r in greedy) == text  # streamed pieces add up to the whole decoding

    serving(decoder, scenario)


@pytest.mark.parametrize(("sampling", "expected"), [
    ({"temperature": 2.5}, "temperature: 2.5; it must be 0 (greedy) to 2"),
    ({"temperature": -0.5}, "temperature: -0.5; it must be 0 (greedy) to 2"),
    ({"temperature": math.nan}, "temperature: nan; it must be 0 (greedy) to 2"),
    ({"top_p": 0.0}, "top_p: 0.0; it must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p: 1.5; it must be in (0, 1]"),
    ({"top_k": 261}, "top_k: 261; it must be 0 (all) to the vocabulary size 260"),
    ({"stop": ["a"] * 5}, "stop: 5 stop strings; the limit is 4"),
    ({"stop": ["ok", ""]}, "stop[1]: 0 characters; it must be 1 to 64"),
    ({"stop": ["x" * 65]}, "stop[0]: 65 characters; it must be 1 to 64"),
    ({"stop": ["a\x00b"]}, "stop[0]: 'a\\x00b' contains a NUL character"),
])
def test_bad_sampling_values_are_invalid_arguments_naming_the_field_and_value(decoder, sampling, expected):
    async def scenario(stub, servicer):
        code, details = await code_of(stub.Generate(ipb.GenerateRequest(prompt="x", max_tokens=2, **sampling),
                                                    timeout=30))
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, expected)
        assert servicer.generations.inflight == 0

    serving(decoder, scenario)


def test_cli_refuses_bad_sampling_and_capacity_options_before_any_work(capsys):
    assert main(["generate", "--worker", "127.0.0.1:1", "--top-k", "-1", "hi"]) == 2
    assert "--top-k: must be 0 or more, got -1" in capsys.readouterr().err
    worker = ["worker", "--endpoint", "e", "--model", "tiny-llama"]
    assert main([*worker, "--max-queue", "-1"]) == 2
    assert "--max-queue: -1 must be 0 to 60000" in capsys.readouterr().err
    assert main([*worker, "--max-inflight", "0"]) == 2
    assert "--max-inflight: 0 must be a number > 0" in capsys.readouterr().err


def test_embed_requests_of_different_callers_are_batched_each_answered_at_one_map(embedder):
    requests = [[f"read file number {i}", "join two paths" * (i % 3 + 1)][: i % 2 + 1] for i in range(12)]
    # fp8-weight-only: its rows do not depend on the batch's shape, so batched equals unbatched to rounding
    # (W8A8 "fp8" on the CPU kernel gives a lone text other values than the same text in a batch).
    fp8 = {layer: "fp8-weight-only" for layer in embedder.catalog}
    embedder.apply(1, {})
    alone = {1: [embedder.embed(texts)[0] for texts in requests]}
    embedder.apply(2, fp8)
    alone[2] = [embedder.embed(texts)[0] for texts in requests]

    def close(a, b) -> bool:
        return all(math.isclose(x, y, abs_tol=1e-5) for u, v in zip(a, b, strict=True)
                   for x, y in zip(u, v, strict=True))

    async def scenario(stub, servicer):
        switching, stop = [], threading.Event()

        def switch():  # maps change under the load, between passes
            version = 2
            while not stop.is_set():
                version = 3 - version
                embedder.apply(version, {} if version == 1 else fp8)
                switching.append(version)

        switcher = threading.Thread(target=switch)
        switcher.start()
        try:
            for _ in range(3):
                answers = await asyncio.gather(*(stub.Embed(ipb.EmbedRequest(texts=t), timeout=60) for t in requests))
                for i, answer in enumerate(answers):
                    mine = [list(e.values) for e in answer.embeddings]
                    assert len(mine) == len(requests[i])
                    assert close(mine, alone[answer.policy_version][i])  # its own texts, all at its map
                    assert not close(mine, alone[3 - answer.policy_version][i])
        finally:
            stop.set()
            switcher.join()
        assert servicer.embedder.batches < 3 * len(requests)  # callers shared forward passes
        assert len(switching) > 1

    serving(embedder, scenario, Capacity(embed_batch=32, embed_wait_ms=20))
