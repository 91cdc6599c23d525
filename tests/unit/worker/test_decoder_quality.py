"""LLM quality against the resident base, and the decoder sweep, on the tiny random-weight Llama."""

from __future__ import annotations

import math

import pytest

from mixprec.metrics import worsening
from worker.engine import HybridEngine
from worker.models.tiny import load_tiny_decoder
from worker.quality.docstrings import load_pairs
from worker.quality.language import language_evaluator
from worker.sweep import run_sweep, units_for

pytestmark = pytest.mark.slow  # real forward passes and sweeps: tens of seconds on 2 cores


@pytest.fixture(scope="module")
def tiny():
    model = load_tiny_decoder()
    engine = HybridEngine(model.module, model.layer_map)
    return model, engine, language_evaluator(engine, model, samples=4, prompts=2, greedy_tokens=6)


def test_an_all_base_policy_has_deltas_of_exactly_zero(tiny):
    _, engine, evaluator = tiny
    result = evaluator.evaluate(dict.fromkeys(engine.catalog, "bf16"))
    assert result.deltas == {"kl_divergence": 0.0, "top1_agreement": 0.0, "perplexity": 0.0, "greedy_match": 0.0}
    assert result.metrics["greedy_match"] == 1.0 and result.metrics["top1_agreement"] == 1.0
    assert math.isfinite(result.metrics["perplexity"]) and result.metrics["perplexity"] > 1


def test_fp8_worsens_every_llm_metric_in_its_own_direction(tiny):
    _, engine, evaluator = tiny
    result = evaluator.evaluate(dict.fromkeys(engine.catalog, "fp8"))
    assert result.deltas["kl_divergence"] > 0 and result.deltas["top1_agreement"] < 0
    assert result.deltas["greedy_match"] < 0
    for metric in ("kl_divergence", "top1_agreement", "greedy_match"):
        assert worsening(metric, result.deltas[metric]) > 0, metric
    # only the KV caches in FP8 also moves the distribution: K and V are read back quantized
    kv_only = evaluator.evaluate({layer: "fp8" for layer in engine.catalog if layer.endswith("kv_cache")})
    assert 0 < kv_only.deltas["kl_divergence"]


def test_fused_granularity_keeps_qkv_and_gate_up_together():
    catalog = load_tiny_decoder(layers=1).catalog
    units = {unit.name: unit.layers for unit in units_for(catalog, "fused")}
    assert units == {
        "layers.0.attention.qkv_proj": ["layers.0.attention.q_proj", "layers.0.attention.k_proj",
                                        "layers.0.attention.v_proj"],
        "layers.0.attention.o_proj": ["layers.0.attention.o_proj"],
        "layers.0.mlp.gate_up_proj": ["layers.0.mlp.gate_proj", "layers.0.mlp.up_proj"],
        "layers.0.mlp.down_proj": ["layers.0.mlp.down_proj"],
        "layers.0.kv_cache": ["layers.0.kv_cache"],
    }


def test_the_decoder_sweep_staged_equals_naive_and_never_splits_a_fused_group(tiny):
    model, engine, _ = tiny
    pairs = load_pairs(4)
    staged = run_sweep(model, engine, pairs, metric=None, granularity="fused", max_drop=0.01, algorithm="exact")
    naive = run_sweep(model, engine, pairs, metric=None, granularity="fused", max_drop=0.01, strategy="naive",
                      algorithm="exact")
    assert staged.metric == "kl_divergence" and staged.strategy == "staged" and naive.strategy == "naive"
    assert [u.drop for u in staged.units] == [u.drop for u in naive.units]  # causal: the cached prefix is exact
    assert staged.precision_map == naive.precision_map
    assert any(p == "fp8" for p in staged.precision_map.values())
    assert staged.combined[-1]["measured_drop"] <= 0.01
    from mixprec.families import LLAMA

    assert LLAMA.split_groups(staged.precision_map) == []


def test_the_fast_decoder_sweep_reaches_the_exact_map_estimating_kv_caches_too(tiny):
    model, engine, _ = tiny
    pairs = load_pairs(4)
    exact = run_sweep(model, engine, pairs, metric=None, granularity="fused", max_drop=0.01, algorithm="exact")
    fast = run_sweep(model, engine, pairs, metric=None, granularity="fused", max_drop=0.01)
    assert fast.precision_map == exact.precision_map and fast.fast["estimate_of"] == "kl_divergence"
    measured = {m["unit"] for m in fast.fast["measured"]}
    assert len(measured) < len(fast.units)
    # The estimate sees the KV caches where attention reads them: each has one, near its exact drop.
    for f, e in zip(fast.units, exact.units, strict=True):
        if f.name.endswith("kv_cache"):
            assert f.trials[0].estimate == pytest.approx(e.trials[0].measured, rel=0.5), f.name
