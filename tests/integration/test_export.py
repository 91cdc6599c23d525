"""`mixprec export`: a stored version as compressed-tensors and ModelOpt configs in the model's own
module names, loaded by the compressed-tensors package into a real (tiny) Llama model."""

from __future__ import annotations

import json

import pytest
from support import RunningControlPlane, rules, stubs

from mixprec.cli.main import main
from mixprec.families import LLAMA
from mixprec.v1 import policy_pb2 as pb

# TensorRT-LLM's QuantAlgo names that ModelOpt writes, and the documented keys of hf_quant_config.json.
MODELOPT_ALGOS = {"FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_BLOCK_SCALES", "W8A16", "W4A16", "W4A16_AWQ",
                  "W4A8_AWQ", "W8A8_SQ_PER_CHANNEL", "NVFP4", "MIXED_PRECISION"}
MODELOPT_KEYS = {"quant_algo", "kv_cache_quant_algo", "quantized_layers", "exclude_modules", "group_size",
                 "has_zero_point", "pre_quant_scale"}


@pytest.fixture(scope="module")
def tiny_llama():
    """A 2-block Llama built in code (random weights): the module names a real checkpoint has."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    return LlamaForCausalLM(config)


@pytest.fixture
def plane(tmp_path):
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'cp.db'}")
    policies, _ = stubs(running.address)
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="llm", model="gemma3-270m", layers=LLAMA.catalog(2)))
    versions = [
        # 1: attention per-channel FP8, gate/up per-tensor, down and block 1's MLP at base, FP8 KV cache
        (rules(("layers.*.attention.*", "fp8"), ("layers.0.mlp.[gu]*", "fp8-tensor")), "fp8"),
        # 2: k_proj alone: splits block 0's fused q/k/v
        (rules(("layers.0.attention.k_proj", "fp8")), ""),
        # 3: FP8 weight-only down projections, which ModelOpt cannot express
        (rules(("layers.*.mlp.down_proj", "fp8-weight-only")), ""),
    ]
    for parent, (spec, kv_cache) in enumerate(versions):
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="llm", parent_version=parent, rules=spec,
                                                     kv_cache=kv_cache))
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="custom", model="mypkg.models:make", layers=["fc1"]))
    policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="custom", parent_version=0, rules=rules(("fc1", "fp8"))))
    yield running
    running.stop()


def run_export(plane, endpoint, version, fmt, out) -> int:
    return main(["--server", plane.address, "export", endpoint, str(version), "--format", fmt, "-o", str(out)])


@pytest.mark.slow  # builds a transformers model
def test_compressed_tensors_config_loads_into_the_model_it_names(plane, tmp_path, tiny_llama):
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    assert run_export(plane, "llm", 1, "compressed-tensors", tmp_path / "ct") == 0
    raw = json.loads((tmp_path / "ct" / "quantization_config.json").read_text())
    config = QuantizationConfig.model_validate(raw)
    assert config.kv_cache_scheme is not None and config.kv_cache_scheme.type == "float"
    assert "lm_head" in config.ignore and "model.layers.0.mlp.down_proj" in config.ignore

    apply_quantization_config(tiny_llama, config)
    schemes = {name: getattr(m, "quantization_scheme", None) for name, m in tiny_llama.named_modules()}
    q_proj = schemes["model.layers.1.self_attn.q_proj"]
    assert q_proj.weights.strategy == "channel" and q_proj.input_activations.strategy == "token"
    assert q_proj.input_activations.dynamic is True
    gate = schemes["model.layers.0.mlp.gate_proj"]
    assert gate.weights.strategy == "tensor" and gate.input_activations.strategy == "tensor"
    quantized = {name for name, scheme in schemes.items() if scheme is not None and scheme.weights is not None}
    assert quantized == {f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qkvo"} | {
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"}
    assert schemes["lm_head"] is None and schemes["model.layers.1.mlp.up_proj"] is None


@pytest.mark.slow  # builds a transformers model
def test_modelopt_config_has_the_documented_fields_and_real_module_names(plane, tmp_path, tiny_llama):
    assert run_export(plane, "llm", 1, "modelopt", tmp_path / "mo") == 0
    raw = json.loads((tmp_path / "mo" / "hf_quant_config.json").read_text())
    assert set(raw) == {"producer", "quantization"} and raw["producer"]["name"] == "mixprec"
    quantization = raw["quantization"]
    assert set(quantization) <= MODELOPT_KEYS
    assert quantization["quant_algo"] == "MIXED_PRECISION" and quantization["kv_cache_quant_algo"] == "FP8"
    modules = dict(tiny_llama.named_modules())
    layers = quantization["quantized_layers"]
    assert all(name in modules and spec["quant_algo"] in MODELOPT_ALGOS for name, spec in layers.items())
    assert layers["model.layers.0.self_attn.v_proj"] == {"quant_algo": "FP8_PER_CHANNEL_PER_TOKEN"}
    assert layers["model.layers.0.mlp.up_proj"] == {"quant_algo": "FP8"}
    assert len(layers) == 10 and "lm_head" in quantization["exclude_modules"]
    assert "model.layers.1.mlp.gate_proj" in quantization["exclude_modules"]


def test_what_an_engine_cannot_run_is_refused_by_name_and_nothing_is_written(plane, tmp_path, capsys):
    assert run_export(plane, "llm", 2, "compressed-tensors", tmp_path / "split") == 2
    err = capsys.readouterr().err
    assert "layers.0.attention.q_proj + layers.0.attention.k_proj + layers.0.attention.v_proj" in err
    assert "bf16 / fp8 / bf16" in err
    assert not (tmp_path / "split").exists()

    assert run_export(plane, "llm", 3, "modelopt", tmp_path / "wo") == 2
    assert "fp8-weight-only" in capsys.readouterr().err
    assert run_export(plane, "llm", 3, "compressed-tensors", tmp_path / "wo") == 0
    group = json.loads((tmp_path / "wo" / "quantization_config.json").read_text())["config_groups"]["group_0"]
    assert group["input_activations"] is None and group["targets"] == [
        "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]

    assert run_export(plane, "custom", 1, "modelopt", tmp_path / "c") == 2
    assert "has no known module names" in capsys.readouterr().err
    assert run_export(plane, "llm", 9, "modelopt", tmp_path / "c") == 3
