"""The mixprec story on an LLM (Gemma 3 270M): catalog, sweep with the KV cache by layer kind, a guarded
rollout read in LLM metrics while Generate traffic flows, an automatic rollback, a one-call rollback."""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack

import grpc

from mixprec.demo_story import Story, step, tell
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

MODEL = "gemma3-270m"
ENDPOINT = "demo-llm"
WORKERS = ("llm-a", "llm-b")
MAX_RISE = {"kl_divergence": 0.015}  # how far the distribution may move from BF16
MAX_DROP = {"top1_agreement": 0.10}
SWEEP_BUDGET = 0.01  # KL rise of the sweep's whole map
PROMPTS = ["def read_lines(path):", "The json module", "Sort a list of tuples by"]


class GenerateTraffic(threading.Thread):
    """Steady Generate requests; each stream must name one policy version from its first token to its last."""

    def __init__(self, addresses: list[str]):
        super().__init__(daemon=True)
        self.addresses, self.stop, self.sent, self.failed, self.mixed = addresses, threading.Event(), 0, 0, 0

    def run(self) -> None:
        stubs = [inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(a)) for a in self.addresses]
        i = 0
        while not self.stop.is_set():
            try:
                stream = stubs[i % len(stubs)].Generate(
                    ipb.GenerateRequest(prompt=PROMPTS[i % len(PROMPTS)], max_tokens=6), timeout=120)
                versions = {r.policy_version for r in stream}
                self.sent += 1
                self.mixed += len(versions) > 1
            except grpc.RpcError:
                self.failed += 1
            i += 1
            self.stop.wait(1.0)  # steady, not saturating: on 2 cores the sweep and the evaluations need them too


class LlmDemo(Story):
    endpoint = ENDPOINT
    model = MODEL
    workers = WORKERS
    fleet_columns = ["worker", "applied", "quality (delta vs base)", "tok/s prefill/decode"]

    def start(self, stack: ExitStack) -> None:
        self.start_control_plane(stack)
        step(f"{len(WORKERS)} {MODEL} workers: BF16 and FP8 weights resident, KV cache precision per request")
        addresses = self.start_workers(stack, 900, "the first load ever dequantizes the GGUF weights")
        catalog = list(self.policies.GetEndpoint(pb.GetEndpointRequest(name=ENDPOINT)).layers)
        print(f"    connected; catalog: {len(catalog)} units (q/k/v/o, gate/up/down and the KV cache of 18 blocks); "
              f"embeddings and lm_head are not in it and stay at base")

        step("traffic: steady Generate streams to both workers, each naming the policy version that produced it")
        self.traffic = GenerateTraffic(addresses)
        self.traffic.start()
        stack.callback(self.traffic.stop.set)

    def sweep_and_propose(self) -> int:
        step(f"sensitivity sweep by layer kind across the 18 blocks (KV caches included; `mixprec sweep "
             f"--granularity fused` measures each block's units): budget KL rise <= {SWEEP_BUDGET}")
        from worker.engine import HybridEngine
        from worker.quality.docstrings import load_pairs
        from worker.sweep import run_sweep
        from worker.sweep_progress import SweepBar

        model = self.load_model()
        engine = HybridEngine(model.module, model.layer_map)
        result = run_sweep(model, engine, load_pairs(self.eval_samples), metric=None, granularity="group",
                           algorithm="exact", max_drop=SWEEP_BUDGET,
                           progress=SweepBar("kl_divergence", sys.stdout, indent="    "))
        ranked = sorted(result.units, key=lambda u: u.drop)
        chosen = sum(p != "bf16" for p in result.precision_map.values())
        print(f"    most tolerant: {', '.join(u.name for u in ranked[:3])}")
        print(f"    most sensitive: {', '.join(u.name for u in ranked[-3:])}")
        print(f"    chosen: {chosen} of {len(result.precision_map)} units in FP8; combined KL rise "
              f"{result.combined[-1]['measured_drop']:.4f} ({result.seconds:.0f}s)")
        version, _ = self.propose(result.precision_map, f"sweep: KL rise <= {SWEEP_BUDGET}")
        self.summary.append({"step": "sweep + propose", "version": f"v{version}",
                             "outcome": f"{chosen}/{len(result.precision_map)} units FP8",
                             "KL rise": f"{result.combined[-1]['measured_drop']:.4f}", "took": f"{result.seconds:.0f}s"})
        return version

    def roll_out(self, version: int, label: str) -> rpb.Rollout:
        step(f"rollout of v{version} ({label}): 1 worker, then 100%; guardrails: KL rise <= "
             f"{MAX_RISE['kl_divergence']}, top-1 agreement drop <= {MAX_DROP['top1_agreement']}")
        current, wanted, took = self.watch_rollout(
            version, [rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=100)],
            rpb.Guardrails(max_rise=MAX_RISE, max_drop=MAX_DROP, reports_per_step=1, bake_seconds=2,
                           step_timeout_seconds=600),
            limit=900, poll=1, settle_timeout=120)
        self.show_fleet(f"after the rollout of v{version}")
        kl = [c.measured for c in current.last_checks if c.guardrail == "max_rise[kl_divergence]"]
        self.summary.append({"step": f"rollout v{version} ({label})", "version": f"v{wanted}",
                             "outcome": rpb.RolloutState.Name(current.state),
                             "KL rise": f"{max(kl):.4f}" if kl else "-", "took": f"{took:.0f}s"})
        return current

    def too_far(self, parent: int) -> tuple[int, str]:
        return self.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint=ENDPOINT, parent_version=parent, author="demo", message="everything FP8, KV cache too (too far)",
            rules=[pb.Rule(match="*", precision="fp8")], kv_cache="fp8")).version, "everything FP8"

    def one_call_rollback(self) -> None:
        rolled, took = self.rollback_to_base(120)
        self.summary.append({"step": "one-call rollback", "version": f"v{rolled.active_version}",
                             "outcome": f"all base in {took:.1f}s", "KL rise": "0.0000", "took": f"{took:.0f}s"})


    def stop_traffic(self) -> tuple[bool, str]:
        traffic = self.traffic
        traffic.stop.set()
        traffic.join(timeout=180)
        return not traffic.failed and not traffic.mixed, (f"{traffic.sent} Generate streams during the demo, "
                                                          f"{traffic.failed} failed, {traffic.mixed} mixing two versions")


def run(keep: bool = False, windows: int = 2, device: str = "auto", dtype: str = "auto") -> int:
    return tell(LlmDemo, windows, keep, "mixprec-llm-demo-", device, dtype)
