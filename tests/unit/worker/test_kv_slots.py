"""The preallocated KV cache slot: the same logits and greedy tokens as the model's own cache (BF16 and
FP8 K/V, Llama and Gemma 3 with sliding-window layers), written in place, bytes per token as before; and
the FP8 decode-attention kernel (Triton's interpreter) against dequantize-then-attend."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
from support import require_triton
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig

from worker.engine import HybridEngine, kernels
from worker.engine.fp8 import dequantize
from worker.engine.kernels import reference
from worker.engine.kv_cache import PrecisionCache, quantize
from worker.models.decoder import decoder_model
from worker.models.tiny import byte_tokenizer, load_tiny_decoder

PROMPT, STEPS = 13, 12


def tiny_gemma():
    """A random Gemma 3 whose sliding window (5) is shorter than the prompt: the window matters."""
    config = Gemma3TextConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                           "sliding_attention"], max_position_embeddings=256,
                              attn_logit_softcapping=None, final_logit_softcapping=None)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return decoder_model("tiny-gemma3", Gemma3ForCausalLM(config), byte_tokenizer(), torch.float32, "cpu")


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    return load_tiny_decoder() if request.param == "llama" else tiny_gemma()


def reference_cache(decoder, precision: str) -> DynamicCache:
    """The model's own dynamic cache; FP8: each new token-head rounded through e4m3 as it is stored
    (what the cache that appended codes to the model's cache read back)."""
    cache = DynamicCache(config=decoder.config)
    if precision == "fp8":
        for layer in cache.layers:
            def rounded(keys, values, *args, _update=layer.update, **kwargs):
                keys, values = (dequantize(*quantize(states), states.dtype) for states in (keys, values))
                return _update(keys, values, *args, **kwargs)
            layer.update = rounded
    return cache


@torch.inference_mode()
def greedy(decoder, cache, ids: list[int], steps: int, after_step=None):
    """Logits of the prompt's last token and of each fed-back token, and the greedy tokens."""
    model, logits, tokens = decoder.module.model, [], []
    inputs = torch.tensor([ids])
    for step in range(steps):
        hidden = model(input_ids=inputs, cache=cache, use_cache=True).last_hidden_state[:, -1]
        logits.append(decoder.head(hidden)[0])
        tokens.append(int(logits[-1].argmax()))
        inputs = torch.tensor([[tokens[-1]]])
        if after_step is not None:
            after_step(step)
    return torch.stack(logits), tokens


def prompt(seed: int = 3) -> list[int]:
    return torch.randint(0, 256, (PROMPT,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_the_slot_cache_gives_the_models_own_logits_and_tokens(model, precision):
    decoder = model.decoder
    ids = prompt()
    want_logits, want_tokens = greedy(decoder, reference_cache(decoder, precision), ids, STEPS)
    slot = PrecisionCache(decoder.config, [precision] * decoder.num_layers, decoder.capacity(PROMPT, STEPS))
    logits, tokens = greedy(decoder, slot, ids, STEPS)
    assert tokens == want_tokens
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    if precision == "fp8":  # dequantized in the model's own order: bit for bit, so no e4m3 code downstream flips
        assert torch.equal(logits, want_logits)
    assert slot.get_seq_length() == PROMPT + STEPS - 1


def test_sliding_layers_keep_their_window_and_the_window_matters():
    decoder = tiny_gemma().decoder
    ids = prompt(4)
    slot = PrecisionCache(decoder.config, ["bf16"] * decoder.num_layers, decoder.capacity(PROMPT, STEPS))
    greedy(decoder, slot, ids, STEPS)
    assert [layer.slots for layer in slot.layers] == [5, 5, PROMPT + STEPS, 5]  # a ring of the window each
    # The same model without its sliding windows decodes otherwise: the window changed these logits.
    decoder.config.layer_types = ["full_attention"] * 4
    try:
        unwindowed, _ = greedy(decoder, DynamicCache(config=decoder.config), ids, 3)
    finally:
        decoder.config.layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    windowed, _ = greedy(decoder, DynamicCache(config=decoder.config), ids, 3)
    assert not torch.allclose(unwindowed, windowed, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_decode_steps_write_in_place_into_buffers_allocated_once(model, precision):
    decoder = model.decoder
    slot = PrecisionCache(decoder.config, [precision] * decoder.num_layers, decoder.capacity(PROMPT, STEPS))
    addresses = []

    def record(_step):
        addresses.append([(layer.keys.data_ptr(), layer.values.data_ptr(), layer.keys.shape) for layer in slot.layers])

    greedy(decoder, slot, prompt(), STEPS, after_step=record)
    assert all(step == addresses[0] for step in addresses)  # the same buffers after every step: never concatenated
    per_token = PrecisionCache.bytes_per_token(precision, decoder.kv_heads, decoder.head_dim, torch.float32)
    stored = PROMPT + STEPS - 1
    for layer in slot.layers:
        assert layer.bytes_per_token() == per_token  # the bytes a token took in the model's cache, scales included
        assert layer.allocated_bytes() == layer.slots * per_token
        assert layer.nbytes() == min(stored, layer.slots) * per_token
    assert slot.allocated_bytes() >= slot.nbytes()


def test_a_generation_reports_allocated_and_used_bytes():
    model = load_tiny_decoder()
    engine = HybridEngine(model.module, model.layer_map)
    engine.apply({"layers.1.kv_cache": "fp8"})
    out = model.decoder.generate(prompt(), 6)
    per_token = 2 * 2 * 16 * 4 * 2 + 2 * 2 * (16 + 4)  # two float32 layers, one fp8 layer
    assert out.kv_allocated_bytes == (PROMPT + 6) * per_token  # prompt + max_tokens, allocated at the start
    assert out.kv_bytes == (PROMPT + len(out.tokens) - 1) * per_token


# --- the FP8 decode-attention kernel -------------------------------------------------------------------


@pytest.fixture
def interpreted(monkeypatch):
    require_triton()
    assert os.environ.get("TRITON_INTERPRET") == "1", "set before Triton is first imported (tests/conftest.py)"
    monkeypatch.setenv(kernels.TRITON_ON_CPU_ENV, "1")
    assert kernels.triton_runs(torch.device("cpu"))
    return importlib.import_module("worker.engine.kernels.triton_decode_attention")


def fp8_context(batch: int, kv_heads: int, slots: int, head_dim: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(2, batch, kv_heads, slots, head_dim, generator=generator)
    states *= torch.logspace(-2, 1, slots).view(1, 1, 1, slots, 1)  # scales that differ by token
    (kc, ks), (vc, vs) = quantize(states[0]), quantize(states[1])
    return kc, ks, vc, vs


@pytest.mark.parametrize("heads, kv_heads, head_dim, lengths, window, softcap, dtype", [
    (8, 2, 16, [37, 5, 300], None, None, torch.float32),  # GQA 4:1, lengths not multiples of a block
    (4, 4, 24, [300, 1], None, None, torch.float32),  # no GQA, a head_dim that is no power of two
    (6, 2, 16, [300, 40, 3], 17, None, torch.float32),  # a sliding window, shorter than some lengths
    (8, 1, 32, [520, 77], None, 50.0, torch.bfloat16),  # one KV head, softcapping, several chunks, bf16
])
def test_the_decode_kernel_matches_dequantize_then_attend(interpreted, heads, kv_heads, head_dim, lengths,
                                                          window, softcap, dtype):
    batch, slots = len(lengths), max(lengths) + 3
    kc, ks, vc, vs = fp8_context(batch, kv_heads, slots, head_dim, seed=heads)
    query = torch.randn(batch, heads, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype) * 3
    lengths = torch.tensor(lengths, dtype=torch.int32)
    scaling = head_dim ** -0.5
    got = interpreted.decode_attention(query, kc, ks, vc, vs, lengths, scaling, softcap, window)
    want = reference.decode_attention(query, kc, ks, vc, vs, lengths, scaling, softcap, window)
    assert got.dtype == dtype and got.shape == (batch, heads, head_dim)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)
    # Keys past a sequence's length (or before its window) are never read: garbage there changes nothing.
    for t in (kc, vc):
        t.view(torch.uint8)[0, :, int(lengths[0]):] = 0x7E  # 448
    torch.testing.assert_close(interpreted.decode_attention(query, kc, ks, vc, vs, lengths, scaling, softcap, window),
                               got, rtol=0, atol=0)


def test_decode_steps_read_fp8_codes_through_the_kernel_and_decode_the_same(interpreted, monkeypatch):
    model = load_tiny_decoder()
    engine = HybridEngine(model.module, model.layer_map)
    engine.apply({f"layers.{i}.kv_cache": "fp8" for i in range(3)})
    calls = []
    original = interpreted.decode_attention
    monkeypatch.setattr(interpreted, "decode_attention", lambda *a: calls.append(a[1].shape) or original(*a))
    with_kernel = model.decoder.generate(prompt(), 6)
    assert len(calls) == 3 * (len(with_kernel.tokens) - 1)  # every decode step of every layer read codes
    assert calls[0][2] == PROMPT + 1 and calls[-1][2] == PROMPT + len(with_kernel.tokens) - 1
    monkeypatch.delenv(kernels.TRITON_ON_CPU_ENV)
    dequantized = model.decoder.generate(prompt(), 6)
    assert with_kernel.tokens == dequantized.tokens and len(calls) == 3 * (len(with_kernel.tokens) - 1)


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
@torch.inference_mode()
def test_a_prompt_fed_in_chunks_reads_the_window_before_overwriting_it(precision):
    decoder = tiny_gemma().decoder
    ids = prompt(5)
    slot = PrecisionCache(decoder.config, [precision] * decoder.num_layers, decoder.capacity(PROMPT, 4))
    outputs = []
    for cache in (reference_cache(decoder, precision), slot):
        model = decoder.module.model
        model(input_ids=torch.tensor([ids[:4]]), cache=cache, use_cache=True)  # shorter than the window
        outputs.append(model(input_ids=torch.tensor([ids[4:]]), cache=cache, use_cache=True).last_hidden_state)
    assert slot.layers[0].seen == PROMPT and slot.layers[0].slots == 5
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
