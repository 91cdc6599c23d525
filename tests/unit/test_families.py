import pytest

from mixprec.errors import InvalidArgument
from mixprec.families import BERT, LLAMA, family_of, is_kv_cache


def test_a_decoder_block_names_attention_mlp_and_its_kv_cache():
    layer_map = LLAMA.layer_map(2)
    assert len(layer_map) == 16
    assert layer_map["layers.1.attention.q_proj"] == "model.layers.1.self_attn.q_proj"
    assert layer_map["layers.0.mlp.gate_proj"] == "model.layers.0.mlp.gate_proj"
    assert layer_map["layers.1.kv_cache"] == "model.layers.1.self_attn"
    assert list(LLAMA.linear_map(2)) == [name for name in layer_map if not is_kv_cache(name)]
    assert LLAMA.module_name("layers.1.mlp.down_proj") == "model.layers.1.mlp.down_proj"


def test_embeddings_and_lm_head_stay_at_base_and_out_of_the_catalog():
    assert {"model.embed_tokens", "lm_head"} <= set(LLAMA.at_base)
    paths = set(LLAMA.layer_map(18).values())
    assert not any(path in paths for path in LLAMA.at_base)
    assert len(LLAMA.catalog(18)) == 144  # Gemma 3 270M: 18 blocks x (7 linear layers + KV cache)


def test_the_encoder_family_has_no_kv_cache():
    assert BERT.layer_map(1)["layers.0.attention.q_proj"] == "encoder.layer.0.attention.self.query"
    assert not any(is_kv_cache(name) for name in BERT.catalog(6))
    with pytest.raises(InvalidArgument, match="kv_cache"):
        BERT.module_name("layers.0.kv_cache")


def test_a_map_that_splits_a_fused_group_is_found_by_group():
    base = dict.fromkeys(LLAMA.catalog(2), "bf16")
    assert LLAMA.split_groups(base) == []
    assert LLAMA.split_groups({**base, **dict.fromkeys(LLAMA.fused_group_of("layers.1.mlp.up_proj"), "fp8")}) == []
    split = LLAMA.split_groups({**base, "layers.1.attention.k_proj": "fp8", "layers.0.mlp.up_proj": "fp8"})
    assert split == [(("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj"), ["bf16", "fp8"]),
                     (("layers.1.attention.q_proj", "layers.1.attention.k_proj", "layers.1.attention.v_proj"),
                      ["bf16", "fp8", "bf16"])]
    assert LLAMA.fused_group_of("layers.3.attention.o_proj") == ("layers.3.attention.o_proj",)


def test_models_name_their_family():
    assert family_of("minilm") is BERT
    assert family_of("gemma3-270m") is LLAMA and family_of("hf:/models/qwen") is LLAMA
    assert family_of("mypkg.models:build") is None
    with pytest.raises(InvalidArgument, match="'head'"):
        LLAMA.module_name("head")
