"""Serving under concurrent load: N clients through a real worker's InferenceService over gRPC.

One worker (the real `WorkerAgent` InferenceService on port 0) serves Generate. The same requests run
three times: one at a time (one client) and from N concurrent clients, both at all-BF16 (v1: the
speed comparison), then from N clients while the precision map switches between all-BF16 and
all-FP8 (v2, KV caches included; `--fp8 kv`: the KV caches only) under that load. Measured per
phase: aggregate generated tokens/s, p50/p99 time to first token, p50/p99 time per token after the
first. Every
response is checked: all of its streamed pieces name one policy version, and its tokens equal the
tokens that version's map generates for that prompt alone (greedy; references computed first).

Each generation still runs alone (batch 1) on its own thread: decode steps of different requests are
not batched yet (issue 23 part 3), so on a CPU the clients share the cores rather than a forward pass.

Usage: python benchmarks/serving.py [--model tiny-llama|gemma3-270m] [--clients 8] [--requests 2]
                                    [--tokens 32] [--switches 50] [--device auto] [--fp8 all|kv]
Ends with `serving: 8 clients X.Xx one at a time, per-token p99 X.Xx lone, mixed-map responses N`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mixprec import transport  # noqa: E402
from mixprec.v1 import inference_pb2 as ipb  # noqa: E402
from mixprec.v1 import inference_pb2_grpc  # noqa: E402
from worker.agent import AgentConfig, WorkerAgent  # noqa: E402
from worker.runtime import build_runtime  # noqa: E402
from worker.serving import Capacity  # noqa: E402

PROMPTS = ["def read_lines(path):", "Return the sum of", "class Cache:\n    def get(self, key):",
           "import os\n\n", "The json module", "for i in range(10):", "# Sort the list by", "SELECT name FROM"]
BASE, FP8 = 1, 2  # the two policy versions the switcher alternates


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else 0.0


class Phase:
    """What one phase's responses measured."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.per_token: list[float] = []
        self.tokens = 0
        self.mixed = 0        # responses whose pieces named more than one policy version
        self.mismatched = 0   # responses whose tokens are not their version's map's tokens
        self.versions: dict[int, int] = {}
        self.seconds = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


async def one_request(stub, prompt: str, tokens: int, phase: Phase, reference: dict) -> None:
    started = time.perf_counter()
    last, versions, ids = None, set(), []
    async for response in stub.Generate(ipb.GenerateRequest(prompt=prompt, max_tokens=tokens), timeout=600):
        now = time.perf_counter()
        versions.add(response.policy_version)
        if response.token_ids:
            if last is None:
                phase.first.append(now - started)
            else:
                phase.per_token.append(now - last)
            last = now
            ids.extend(response.token_ids)
    phase.tokens += len(ids)
    phase.mixed += len(versions) > 1
    version = min(versions)
    phase.versions[version] = phase.versions.get(version, 0) + 1
    phase.mismatched += ids != reference.get((prompt, version))


async def run_phase(stub, jobs: list[list[str]], tokens: int, reference: dict) -> Phase:
    """`jobs`: each client's prompts, run in turn; the clients run concurrently."""
    phase = Phase()

    async def client(prompts):
        for prompt in prompts:
            await one_request(stub, prompt, tokens, phase, reference)

    started = time.perf_counter()
    await asyncio.gather(*(client(prompts) for prompts in jobs))
    phase.seconds = time.perf_counter() - started
    return phase


def references(runtime, maps: dict[int, dict], prompts: list[str], tokens: int) -> dict:
    """Each prompt's greedy tokens alone at each version's map."""
    out = {}
    for version, precision_map in maps.items():
        runtime.apply(version, precision_map)
        for prompt in prompts:
            ids = runtime.encode(prompt, tokens)
            out[(prompt, version)] = runtime.generate(ids, tokens, lambda *_: None)[0].tokens
    return out


class Switcher(threading.Thread):
    """Alternates the two maps every `interval` seconds until the load ends."""

    def __init__(self, runtime, maps: dict[int, dict], interval: float):
        super().__init__(daemon=True)
        self.runtime, self.maps, self.interval = runtime, maps, interval
        self.switches = 0
        self.stop = threading.Event()

    def run(self) -> None:
        version = BASE
        while not self.stop.wait(self.interval):
            version = FP8 if version == BASE else BASE
            self.runtime.apply(version, self.maps[version])
            self.switches += 1


def row(name: str, phase: Phase) -> str:
    ms = 1000
    return (f"| {name} | {phase.tokens} | {phase.seconds:.2f} | {phase.tokens_per_second:.1f} | "
            f"{percentile(phase.first, 50) * ms:.1f} | {percentile(phase.first, 99) * ms:.1f} | "
            f"{percentile(phase.per_token, 50) * ms:.2f} | {percentile(phase.per_token, 99) * ms:.2f} | "
            f"{phase.mixed} | {phase.mismatched} |")


async def bench(args) -> None:
    runtime = build_runtime(args.model, eval_samples=0, device=args.device)
    maps = {BASE: {}, FP8: {layer: "fp8" for layer in runtime.catalog if args.fp8 == "all" or "kv_cache" in layer}}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
    print(f"{args.model} on {runtime.hardware().get('device', '?')} ({platform.machine()}, {os.cpu_count()} CPUs): "
          f"{args.clients} clients x {args.requests} requests x {args.tokens} tokens, v2: {args.fp8} FP8",
          file=sys.stderr)
    reference = references(runtime, maps, sorted(set(prompts)), args.tokens)
    runtime.apply(BASE, maps[BASE])
    config = AgentConfig(endpoint="bench", model=args.model, server="127.0.0.1:1", inference_listen="127.0.0.1:0",
                         capacity=Capacity(max_inflight=args.clients, max_queue=args.clients))
    agent = WorkerAgent(config, runtime)
    port = await agent.start_inference()
    channel = transport.aio_channel(f"127.0.0.1:{port}")
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    try:
        await run_phase(stub, [prompts[:1]], 4, {})  # warm
        alone = await run_phase(stub, [[p for p in prompts for _ in range(args.requests)]], args.tokens, reference)
        clients = [[p] * args.requests for p in prompts]
        together = await run_phase(stub, clients, args.tokens, reference)  # the same map: the fair comparison
        # At least --switches under the load unless the clients are more than 2x faster than one at a time
        # (the count is printed), at most one each 20 ms; the switching goes on until the last response.
        switcher = Switcher(runtime, maps, max(alone.seconds / (2 * max(args.switches, 1)), 0.02))
        switcher.start()
        switching = await run_phase(stub, clients, args.tokens, reference)
        switcher.stop.set()
        switcher.join()
    finally:
        await channel.close()
        await agent._server.stop(0)
    print("| phase | tokens | seconds | tokens/s | TTFT p50 ms | TTFT p99 ms | per-token p50 ms | per-token p99 ms "
          "| mixed-map | not their map's tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(row("one at a time (v1)", alone))
    print(row(f"{args.clients} clients (v1)", together))
    print(row(f"{args.clients} clients, maps switching", switching))
    print(f"\nswitches under load: {switcher.switches}; responses per version while switching: "
          f"{', '.join(f'v{v} {n}' for v, n in sorted(switching.versions.items()))}")
    speed = together.tokens_per_second / max(alone.tokens_per_second, 1e-9)
    p99 = percentile(together.per_token, 99) / max(percentile(alone.per_token, 99), 1e-9)
    mixed = alone.mixed + together.mixed + switching.mixed
    print(f"serving: {args.clients} clients {speed:.1f}x one at a time, per-token p99 {p99:.1f}x lone, "
          f"mixed-map responses {mixed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama (default) or gemma3-270m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--switches", type=int, default=50,
                        help="map switches under the concurrent load (spread so that at least this many happen "
                        "unless the clients run more than 2x faster than one at a time)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fp8", choices=("all", "kv"), default="all",
                        help="the second map: every unit in FP8 (default), or the KV caches only (faster on a CPU)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
