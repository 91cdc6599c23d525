"""Device and dtype: `--device`/`--dtype` resolved by name, models loaded as asked, BF16 on the CPU close to
float32 end to end, and no tensor of an evaluation, a sweep or a request made off the model's device."""

from __future__ import annotations

import json

import pytest
import torch
from device_guard import no_stray_tensors

from mixprec.cli.main import main
from mixprec.errors import InvalidArgument
from worker.device import placement, resolve_device, resolve_dtype
from worker.engine import HybridEngine
from worker.models import load_model
from worker.quality.docstrings import load_pairs
from worker.quality.language import language_evaluator
from worker.quality.shadow import ShadowEvaluator
from worker.runtime import build_runtime
from worker.sweep import run_sweep
from worker.sweep_estimate import rank_correlation

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.fixture(scope="module")
def tiny_bf16():
    model = load_model("tiny-llama", dtype="bf16")
    return model, HybridEngine(model.module, model.layer_map)


@pytest.fixture(scope="module")
def tiny_fp32():
    model = load_model("tiny-llama", dtype="fp32")
    return model, HybridEngine(model.module, model.layer_map)


@pytest.fixture(scope="module")
def minilm_bf16():
    model = load_model("minilm", dtype="bf16")
    return model, HybridEngine(model.module, model.layer_map)


# --- resolving the options ---------------------------------------------------------------------------


@NO_CUDA
def test_auto_is_the_cpu_in_float32_here_and_bf16_on_cuda():
    assert placement("auto", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert placement("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_dtype(torch.float16) == torch.float16


@pytest.mark.parametrize("value, words", [("gpu", "is not auto, cpu, cuda or cuda:N"), ("cuda:x", "is not auto"),
                                          ("CPU", "is not auto")])
def test_a_device_that_is_no_device_is_refused_by_flag_and_value(value, words):
    with pytest.raises(InvalidArgument) as raised:
        resolve_device(value)
    (error,) = raised.value.errors
    assert error.field == "--device" and repr(value) in error.message and words in error.message


@pytest.mark.parametrize("value", ["int8", "bfloat16", ""])
def test_a_dtype_that_is_not_offered_is_refused_by_flag_and_value(value):
    with pytest.raises(InvalidArgument) as raised:
        resolve_dtype(value)
    (error,) = raised.value.errors
    assert error.field == "--dtype" and repr(value) in error.message and "bf16, fp16, fp32" in error.message


@NO_CUDA
@pytest.mark.parametrize("argv", [
    ["catalog", "--model", "tiny-llama"],
    ["eval", "--model", "tiny-llama"],
    ["sweep", "--model", "tiny-llama"],
    ["worker", "--endpoint", "e", "--model", "tiny-llama"],
    ["demo"],
])
def test_cuda_on_a_machine_without_it_exits_2_naming_the_option(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sweep would write sweep.yaml here; it must write nothing
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device: 'cuda': this machine has no CUDA device" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert main([*argv, "--dtype", "int4"]) == 2
    assert "--dtype: 'int4' is not auto or one of bf16, fp16, fp32" in capsys.readouterr().err


# --- loading --------------------------------------------------------------------------------------


def test_decoders_load_in_the_dtype_asked_for_with_float32_rotary_frequencies(tiny_bf16, tmp_path):
    model, engine = tiny_bf16
    assert {p.dtype for p in model.module.parameters()} == {torch.bfloat16}
    assert model.module.model.rotary_emb.inv_freq.dtype == torch.float32  # positions are not rounded to BF16
    assert engine.base_dtype == torch.bfloat16 and model.device == torch.device("cpu")
    # A local Hugging Face directory is read in that dtype too (it used to be forced to float32).
    model.module.save_pretrained(tmp_path)
    model.decoder.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(f"hf:{tmp_path}", dtype="bf16")
    assert {p.dtype for p in loaded.module.parameters()} == {torch.bfloat16}
    assert loaded.module.model.rotary_emb.inv_freq.dtype == torch.float32
    assert {p.dtype for p in load_model(f"hf:{tmp_path}").module.parameters()} == {torch.float32}  # auto on a CPU


def test_the_hardware_report_calls_the_cpu_scaled_mm_a_reference_not_an_fp8_kernel(tiny_bf16):
    _, engine = tiny_bf16
    report = engine.describe_hardware()
    assert report["device"] == "cpu" and report["dtype"] == "bfloat16"
    assert report["fp8_kernel"] is False
    assert report["kernel"] in ("scaled_mm (cpu reference)", "emulated")


# --- BF16 on the CPU, end to end ------------------------------------------------------------------


def test_bf16_decoder_eval_is_close_to_float32_and_all_base_is_exactly_zero(tiny_bf16, tiny_fp32):
    results = {}
    for name, (model, engine) in (("bf16", tiny_bf16), ("fp32", tiny_fp32)):
        evaluator = language_evaluator(engine, model, 4, prompts=2, greedy_tokens=8)
        base = evaluator.evaluate({})
        assert all(delta == 0.0 for delta in base.deltas.values()), (name, base.deltas)
        results[name] = evaluator.evaluate(dict.fromkeys(engine.catalog, "fp8")).deltas
    assert results["bf16"]["kl_divergence"] == pytest.approx(results["fp32"]["kl_divergence"], rel=0.2)
    assert results["bf16"]["top1_agreement"] == pytest.approx(results["fp32"]["top1_agreement"], abs=0.05)


def test_bf16_decoder_sweep_ranks_units_as_float32_does(tiny_bf16, tiny_fp32):
    drops = {}
    for name, (model, engine) in (("bf16", tiny_bf16), ("fp32", tiny_fp32)):
        result = run_sweep(model, engine, load_pairs(6), metric=None, max_drop=0.01)
        assert result.dtype == {"bf16": "bfloat16", "fp32": "float32"}[name] and result.device == "cpu"
        assert result.calibration_drop <= 0.01
        drops[name] = [unit.trials[0].value for unit in result.units]
    assert rank_correlation(drops["bf16"], drops["fp32"]) > 0.9


def test_bf16_minilm_embeds_as_float32_does_and_all_base_is_exactly_zero(minilm_bf16, minilm):
    model, engine = minilm_bf16
    texts = ["read a file line by line", "sort a dictionary by value"]
    vectors = model.embed(texts)
    assert vectors.dtype == torch.float32  # pooled and normalised in float32 whatever the weights
    assert torch.all((vectors * minilm.embed(texts)).sum(-1) > 0.999)
    evaluator = ShadowEvaluator(engine, model, load_pairs(8))
    assert all(delta == 0.0 for delta in evaluator.evaluate({}).deltas.values())
    fp8 = evaluator.evaluate(dict.fromkeys(engine.catalog, "fp8")).deltas["cosine_to_base"]
    assert -0.01 < fp8 < 0  # the float32 model's is -0.0024 on these pairs


def test_eval_and_sweep_commands_run_in_bf16(capsys, tmp_path):
    assert main(["--output", "json", "eval", "--model", "tiny-llama", "--dtype", "bf16", "--device", "cpu",
                 "--samples", "2", "--prompts", "1", "--greedy-tokens", "4"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["base_dtype"] == "bfloat16" and evaluated["device"] == "cpu"
    assert evaluated["deltas"]["kl_divergence"] > 0
    out = tmp_path / "map.yaml"
    assert main(["--output", "json", "sweep", "--model", "tiny-llama", "--dtype", "bf16", "--samples", "4",
                 "--holdout", "0", "--granularity", "group", "-o", str(out)]) == 0
    swept = json.loads(capsys.readouterr().out)
    assert swept["dtype"] == "bfloat16" and out.exists()


def test_a_bf16_runtime_serves_generate_and_embed():
    decoder = build_runtime("tiny-llama", dtype="bf16", eval_samples=0)
    assert decoder.hardware()["dtype"] == "bfloat16"
    seen = []
    generation, version = decoder.generate(decoder.encode("def read_lines(path):", 6), 6,
                                           lambda token, v: seen.append(token))
    assert version == 0 and generation.tokens == seen and len(seen) == 6
    embedder = build_runtime("minilm", dtype="bf16", eval_samples=0)
    vectors, version = embedder.embed(["join paths on any platform"])
    assert version == 0 and len(vectors[0]) == 384
    assert sum(v * v for v in vectors[0]) == pytest.approx(1.0, abs=1e-5)


# --- nothing made off the model's device -----------------------------------------------------------


def test_a_decoder_evaluation_and_generation_make_every_tensor_on_the_model_device(tiny_fp32):
    model, engine = tiny_fp32
    expected = language_evaluator(engine, model, 2, prompts=1, greedy_tokens=4).evaluate(
        {"layers.1.kv_cache": "fp8", "layers.0.mlp.up_proj": "fp8"})
    with no_stray_tensors():
        evaluator = language_evaluator(engine, model, 2, prompts=1, greedy_tokens=4)
        result = evaluator.evaluate({"layers.1.kv_cache": "fp8", "layers.0.mlp.up_proj": "fp8"})
        generation = model.decoder.generate(model.decoder.encode("The json module"), 4)
    assert result.metrics == expected.metrics and len(generation.tokens) == 4


def test_a_decoder_sweep_makes_every_tensor_on_the_model_device(tiny_fp32):
    model, engine = tiny_fp32
    with no_stray_tensors():  # the fast sweep: capture, estimates (KV caches watched), exact runs, checks
        result = run_sweep(model, engine, load_pairs(6), metric=None, max_drop=0.01, granularity="fused")
    assert result.fast["measured"] and result.combined


def test_an_embedder_evaluation_sweep_and_request_make_every_tensor_on_the_model_device(minilm, engine_at_base):
    engine = engine_at_base
    with no_stray_tensors():
        evaluator = ShadowEvaluator(engine, minilm, load_pairs(6))
        deltas = evaluator.evaluate(dict.fromkeys(engine.catalog, "fp8")).deltas
        result = run_sweep(minilm, engine, load_pairs(6), max_drop=0.001)
        with engine.pinned():
            vectors = minilm.embed(["compress bytes with zlib"])
    assert deltas["cosine_to_base"] < 0 and result.units and vectors.shape == (1, 384)
