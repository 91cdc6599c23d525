"""A decoder worker end to end: Generate streams tokens naming the policy version, KV cache FP8 by policy,
LLM quality and tokens/s upstream, bad input refused while the worker keeps serving."""

from __future__ import annotations

import grpc
import pytest
from processes import ENV, MIXPREC, ControlPlaneProc, WorkerProc, wait_until

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import inference_pb2 as ipb
from mixprec.v1 import inference_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

pytestmark = pytest.mark.slow


def generate(worker: WorkerProc, prompt: str, max_tokens: int = 6) -> list[ipb.GenerateResponse]:
    with grpc.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        return list(stub.Generate(ipb.GenerateRequest(prompt=prompt, max_tokens=max_tokens), timeout=120))


def run_cli(*argv: str):
    import subprocess

    return subprocess.run([*MIXPREC, *argv], capture_output=True, text=True, env=ENV, timeout=120)


def serve_decoder(tmp_path, model: str, endpoint: str, eval_samples: int):
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path)
    plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name=endpoint, model=model))
    worker = WorkerProc("w1", endpoint, plane.address, tmp_path, tmp_path / "state", model=model,
                        eval_samples=eval_samples)
    return plane, worker


def test_tiny_decoder_worker_serves_generate_under_a_kv_fp8_policy(tmp_path):
    plane, worker = serve_decoder(tmp_path, "tiny-llama", "llm", eval_samples=2)
    try:
        worker.wait_serving()
        wait_until(lambda: "w1" in plane.workers("llm"), 60, "worker to connect")
        base = generate(worker, "def read_lines(path):")
        assert base[-1].done and {r.policy_version for r in base} == {0}
        assert len([r for r in base if not r.done]) == base[-1].generated_tokens == 6

        version = plane.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint="llm", parent_version=0, rules=[pb.Rule(match="layers.*.mlp.*", precision="fp8")],
            kv_cache="fp8")).version
        plane.fleet.Activate(apb.ActivateRequest(endpoint="llm", version=version, reason="kv fp8"))
        wait_until(lambda: plane.workers("llm")["w1"].applied_version == version, 60, "the FP8 map applied")
        info = {layer.layer: layer for layer in worker.info().layers}
        assert info["layers.1.kv_cache"].precision == "fp8" and info["layers.1.kv_cache"].kernel == "fp8-kv"

        done = run_cli("--output", "json", "generate", "--worker", worker.address, "--max-tokens", "5",
                       "def read_lines(path):")
        assert done.returncode == 0, done.stderr
        assert f'"policy_version": {version}' in done.stdout and '"generated_tokens": 5' in done.stdout

        def quality_and_speed():
            status = plane.workers("llm")["w1"]
            return (status.last_quality.version == version and "kl_divergence" in status.last_quality.deltas
                    and "decode_tokens_per_second" in status.last_serving.metrics)

        wait_until(quality_and_speed, 60, "LLM quality and tokens/s upstream")
        status = plane.workers("llm")["w1"]
        assert status.last_quality.deltas["kl_divergence"] > 0 and status.last_quality.metrics["top1_agreement"] <= 1
        shown = run_cli("--server", plane.address, "fleet", "llm")
        assert shown.returncode == 0 and "kl_divergence=" in shown.stdout and "TOK/S PREFILL/DECODE" in shown.stdout, shown.stdout

        # Bad input: named, INVALID_ARGUMENT / exit 2, and the worker keeps serving.
        with pytest.raises(grpc.RpcError) as refused:
            generate(worker, "x" * 300, max_tokens=10)  # 300 byte tokens > the tiny model's 256 positions
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "context length" in refused.value.details()
        with grpc.insecure_channel(worker.address) as channel, pytest.raises(grpc.RpcError) as embed:
            inference_pb2_grpc.InferenceServiceStub(channel).Embed(ipb.EmbedRequest(texts=["a"]), timeout=30)
        assert embed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        too_many = run_cli("generate", "--worker", worker.address, "--max-tokens", "5000", "hi")
        assert too_many.returncode == 2 and "--max-tokens" in too_many.stderr
        assert generate(worker, "import os")[-1].policy_version == version
    finally:
        worker.stop()
        plane.stop()


def test_gemma_worker_generates_and_reports_llm_quality_of_a_kv_fp8_policy(tmp_path):
    """The real model: one worker, one Generate, one evaluation (the worker's, of the activated map)."""
    plane, worker = serve_decoder(tmp_path, "gemma3-270m", "gemma", eval_samples=1)
    try:
        worker.wait_serving(timeout=600)  # the first load ever dequantizes the GGUF into the cache
        wait_until(lambda: "w1" in plane.workers("gemma"), 60, "worker to connect")
        assert len(worker.info().layers) == 144
        version = plane.policies.CreatePolicy(pb.CreatePolicyRequest(
            endpoint="gemma", parent_version=0, rules=[pb.Rule(match="layers.*.mlp.down_proj", precision="fp8")],
            kv_cache="fp8")).version
        plane.fleet.Activate(apb.ActivateRequest(endpoint="gemma", version=version, reason="kv fp8"))
        wait_until(lambda: plane.workers("gemma")["w1"].applied_version == version, 120, "the map applied")

        responses = generate(worker, "The capital of France is", max_tokens=4)
        assert {r.policy_version for r in responses} == {version} and responses[-1].generated_tokens >= 1
        assert "".join(r.text for r in responses).strip()

        wait_until(lambda: plane.workers("gemma")["w1"].last_quality.version == version, 300, "the evaluation")
        quality = plane.workers("gemma")["w1"].last_quality
        assert quality.deltas["kl_divergence"] > 0 and quality.metrics["perplexity"] > 1
        assert set(quality.deltas) == {"kl_divergence", "top1_agreement", "perplexity", "greedy_match"}
    finally:
        worker.stop()
        plane.stop()


def test_bf16_workers_on_the_cpu_serve_generate_and_embed_and_report_their_hardware(tmp_path):
    """`--dtype bf16` end to end: a decoder and an embedder worker in BF16 serve, and the fleet (CLI
    included) shows the device, the dtype and that the CPU's _scaled_mm is no FP8 GEMM."""
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path)
    for endpoint, model in (("llm", "tiny-llama"), ("emb", "minilm")):
        plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name=endpoint, model=model))
    workers = [WorkerProc(f"w-{endpoint}", endpoint, plane.address, tmp_path, tmp_path / f"state-{endpoint}",
                          "--dtype", "bf16", "--device", "cpu", model=model, eval_samples=2)
               for endpoint, model in (("llm", "tiny-llama"), ("emb", "minilm"))]
    try:
        for worker in workers:
            worker.wait_serving()
        decoder, embedder = workers
        responses = generate(decoder, "def read_lines(path):", max_tokens=4)
        assert responses[-1].done and responses[-1].generated_tokens == 4
        vectors = embedder.embed(["read a file line by line"]).embeddings
        assert len(vectors[0].values) == 384 and abs(sum(v * v for v in vectors[0].values) - 1) < 1e-4
        for endpoint in ("llm", "emb"):
            wait_until(lambda e=endpoint: f"w-{e}" in plane.workers(e), 60, "the worker's hello")
            hardware = plane.workers(endpoint)[f"w-{endpoint}"].hardware
            assert (hardware.device, hardware.dtype, hardware.fp8_kernel) == ("cpu", "bfloat16", False)
            assert hardware.kernel in ("scaled_mm (cpu reference)", "emulated")
        shown = run_cli("--server", plane.address, "fleet", "llm")
        assert shown.returncode == 0 and "cpu · bfloat16 ·" in shown.stdout and "no FP8 GEMM" in shown.stdout
    finally:
        for worker in workers:
            worker.stop()
        plane.stop()


def test_a_worker_asked_for_cuda_without_it_exits_2_before_connecting(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    refused = run_cli("worker", "--endpoint", "llm", "--model", "tiny-llama", "--device", "cuda:1",
                      "--server", "127.0.0.1:1")
    assert refused.returncode == 2 and "--device: 'cuda:1': this machine has no CUDA device" in refused.stderr
