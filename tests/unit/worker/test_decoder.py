"""The decoder path on a tiny random-weight Llama: catalog, exact return to base, FP8 KV cache, pinned maps."""

from __future__ import annotations

import threading

import pytest
import torch

from mixprec.errors import InvalidArgument
from mixprec.families import LLAMA
from worker.engine import HybridEngine
from worker.engine.fp8 import E4M3_MAX, dequantize
from worker.engine.kv_cache import PrecisionCache, quantize
from worker.models.tiny import load_tiny_decoder


@pytest.fixture(scope="module")
def tiny():
    model = load_tiny_decoder()
    engine = HybridEngine(model.module, model.layer_map)
    return model, engine


@pytest.fixture
def at_base(tiny):
    model, engine = tiny
    engine.apply({})
    yield model, engine
    engine.apply({})


def tokens(seed: int = 1, texts: int = 2, length: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (texts, length), generator=torch.Generator().manual_seed(seed))


def untouched_hidden(model, ids):
    with torch.inference_mode():
        return model.module.model(input_ids=ids, use_cache=False).last_hidden_state


def test_catalog_has_attention_mlp_and_kv_cache_and_leaves_embeddings_and_head_at_base(tiny):
    model, engine = tiny
    assert model.catalog == LLAMA.catalog(3)
    assert "layers.2.kv_cache" in engine.catalog and "lm_head" not in model.catalog
    assert set(model.at_base) == {"model.embed_tokens", "lm_head"}
    # the head and the embeddings are plain modules the engine never replaced
    assert type(model.module.lm_head) is torch.nn.Linear
    assert type(model.module.model.embed_tokens) is torch.nn.Embedding


def test_everything_fp8_then_back_to_base_is_bit_exact_kv_included(at_base):
    model, engine = at_base
    ids = tokens()
    before = untouched_hidden(model, ids)
    assert torch.equal(model.decoder.hidden(ids), before)
    engine.apply(dict.fromkeys(engine.catalog, "fp8"))
    assert not torch.equal(model.decoder.hidden(ids), before)
    engine.apply({})
    assert torch.equal(model.decoder.hidden(ids), before)
    base = model.decoder.generate(ids[0].tolist(), 8)
    reference = model.module.generate(ids[:1], max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert base.tokens == reference[0, ids.shape[1]:].tolist()


def test_kv_fp8_alone_changes_outputs_and_other_layers_do_not_move(at_base):
    model, engine = at_base
    ids = tokens(2)
    before = untouched_hidden(model, ids)
    assert engine.apply({"layers.1.kv_cache": "fp8"}) == ["layers.1.kv_cache"]
    assert {s.layer: s.kernel for s in engine.status()}["layers.1.kv_cache"] == "fp8-kv"
    assert not torch.equal(model.decoder.hidden(ids), before)


def test_fp8_kv_round_trip_error_is_bounded_per_token_and_head():
    states = torch.randn(2, 3, 40, 16) * torch.logspace(-3, 2, 40).view(1, 1, 40, 1)
    codes, scales = quantize(states)
    assert codes.dtype == torch.float8_e4m3fn and scales.shape == (2, 3, 40, 1)
    back = dequantize(codes, scales, states.dtype)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normals; below, half the smallest subnormal step
    bound = states.abs() / 16 + scales * 2.0 ** -10
    assert (back - states).abs().le(bound * 1.0001).all()
    assert torch.allclose(scales.squeeze(-1), states.abs().amax(-1) / E4M3_MAX)  # dynamic: amax per token and head


def test_kv_bytes_per_token_fp8_is_about_half_of_bf16_scales_included(tiny):
    model, _ = tiny
    decoder = model.decoder
    fp8, bf16 = decoder.kv_bytes_per_token("fp8"), decoder.kv_bytes_per_token("bf16")
    assert fp8 == 3 * 2 * 2 * (16 + 4) and bf16 == 3 * 2 * 2 * 16 * 2
    # Gemma 3 270M's shape (1 KV head of 256): the goal is at most 0.53x
    assert PrecisionCache.bytes_per_token("fp8", 1, 256) / PrecisionCache.bytes_per_token("bf16", 1, 256) <= 0.53


def test_a_generation_stores_what_it_reports(at_base):
    model, engine = at_base
    engine.apply({"layers.0.kv_cache": "fp8", "layers.2.kv_cache": "fp8"})
    ids = tokens(3, texts=1, length=12)[0].tolist()
    out = model.decoder.generate(ids, 5, on_token=None)
    stored = len(ids) + len(out.tokens) - 1  # the last token is never fed back
    per_token = 2 * 2 * (16 + 4) * 2 + 2 * 2 * 16 * 4  # two fp8 layers + one float32 layer
    assert out.kv_bytes == stored * per_token
    assert out.precisions == {"layers.0.kv_cache": "fp8", "layers.1.kv_cache": "bf16", "layers.2.kv_cache": "fp8"}


def test_a_request_keeps_its_map_across_decode_steps_while_another_is_applied(at_base):
    model, engine = at_base
    ids = tokens(4, texts=1, length=10)[0].tolist()
    fp8_map = dict.fromkeys(engine.catalog, "fp8")
    engine.apply(fp8_map, tag=7)
    steady = model.decoder.generate(ids, 8).tokens
    engine.apply({}, tag=8)
    base = model.decoder.generate(ids, 8).tokens
    assert steady != base  # the two maps do differ on these tokens

    engine.apply(fp8_map, tag=7)
    switched = threading.Event()

    def switch_after_first(_token):
        if not switched.is_set():  # another thread switches the map after the first decoded token
            switcher = threading.Thread(target=engine.apply, args=({}, 8))
            switcher.start()
            switcher.join()
            switched.set()
            assert engine.tag == 8

    with engine.pinned() as snapshot:
        mixed = model.decoder.generate(ids, 8, on_token=switch_after_first)
    assert switched.is_set() and snapshot.tag == 7 and mixed.tokens == steady
    assert set(mixed.precisions.values()) == {"fp8"}


def test_kv_cache_takes_only_bf16_or_fp8(tiny):
    _, engine = tiny
    with pytest.raises(InvalidArgument, match="layers.0.kv_cache"):
        engine.apply({"layers.0.kv_cache": "fp8-tensor"})


def test_staged_runs_from_any_block_equal_full_passes(at_base):
    model, engine = at_base
    ids = tokens(5, texts=3, length=16)
    reference, captured = model.staged.capture([([0, 1], ids[:2]), ([2], ids[2:])])
    assert torch.equal(reference, untouched_hidden(model, ids))
    for layer in ("layers.0.attention.q_proj", "layers.1.kv_cache", "layers.2.mlp.down_proj"):
        block, stage = model.staged.stage_of(layer)
        with engine.using({layer: "fp8"}):
            staged = model.staged.embed_from(captured, block, stage)
            full = model.decoder.hidden(ids)
        assert torch.equal(staged, full), layer
    assert model.staged.work(2, 0) < model.staged.work(0, 0) == 1.0


def test_a_prompt_over_the_context_length_is_refused_by_name(tiny):
    model, _ = tiny
    with pytest.raises(InvalidArgument, match="context length 256"):
        model.decoder.generate(list(range(250)), 10)
