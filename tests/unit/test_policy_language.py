"""The policy language: resolution semantics, validation, the YAML file format."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixprec import policy as lang
from mixprec.errors import InvalidArgument

CATALOG = [
    *(f"layers.{i}.attention.{p}" for i in range(3) for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
    *(f"layers.{i}.mlp.{p}" for i in range(3) for p in ("up_proj", "down_proj")),
    "pooler.dense",
]
KV_CATALOG = [*CATALOG, "layers.0.kv_cache", "layers.1.kv_cache"]


def spec(*rules: tuple[str, str], kv_cache: str = "") -> lang.PolicySpec:
    return lang.PolicySpec(tuple(lang.Rule(m, p) for m, p in rules), kv_cache)


def fields(resolution: lang.Resolution) -> list[str]:
    return [e.field for e in resolution.errors]


def test_unmatched_layers_run_at_base_and_last_matching_rule_wins():
    result = lang.resolve(spec(("layers.*", "fp8"), ("layers.1.*", "fp8-tensor"), ("*.o_proj", "bf16")), CATALOG)
    assert result.valid
    got = result.precision_map()
    assert got["pooler.dense"] == "bf16"
    assert got["layers.0.mlp.up_proj"] == "fp8"
    assert got["layers.1.mlp.up_proj"] == "fp8-tensor"
    assert got["layers.1.attention.o_proj"] == "bf16"
    decided = {r.layer: r.rule for r in result.layers}
    assert decided["pooler.dense"] == lang.NO_RULE and decided["layers.1.attention.o_proj"] == 3


def test_star_crosses_dots_and_matching_is_case_sensitive():
    assert lang.resolve(spec(("layers*proj", "fp8")), CATALOG).valid
    result = lang.resolve(spec(("LAYERS.*", "fp8")), CATALOG)
    assert fields(result) == ["rules[0].match"] and "matches no layer" in result.errors[0].message


def test_base_precision_of_the_endpoint_applies_to_unmatched_layers():
    got = lang.resolve(spec(("pooler.dense", "bf16")), CATALOG, base="fp8-weight-only").precision_map()
    assert got["pooler.dense"] == "bf16" and got["layers.2.mlp.down_proj"] == "fp8-weight-only"


@pytest.mark.parametrize(
    "rules, kv_cache, field, words",
    [
        ((("layers.9.*", "fp8"),), "", "rules[0].match", "matches no layer"),
        ((("layers.*", "fp16"),), "", "rules[0].precision", "unknown precision 'fp16'"),
        ((("", "fp8"),), "", "rules[0].match", "is empty"),
        ((("   ", "fp8"),), "", "rules[0].match", "is empty"),
        ((("layers.[0-2.*", "fp8"),), "", "rules[0].match", "never closed"),
        ((("layers.0]", "fp8"),), "", "rules[0].match", "without a matching"),
        ((("layers.[].x", "fp8"),), "", "rules[0].match", "empty [...] set"),
        ((("layers/0", "fp8"),), "", "rules[0].match", "malformed"),
        ((("layers.*", "fp8-tensor"),), "", "rules[0].precision", "cannot run kv_cache layer"),
        ((("layers.*.kv_cache", "fp8-weight-only"),), "", "rules[0].precision", "cannot run kv_cache"),
        ((), "fp8-tensor", "kv_cache", "unknown precision"),
    ],
)
def test_invalid_rules_are_rejected_naming_field_and_value(rules, kv_cache, field, words):
    result = lang.resolve(spec(*rules, kv_cache=kv_cache), KV_CATALOG)
    assert not result.valid and result.layers == []
    assert field in fields(result)
    assert any(words in e.message for e in result.errors), result.errors


def test_kv_cache_setting_needs_kv_layers_and_overrides_rules():
    assert fields(lang.resolve(spec(kv_cache="fp8"), CATALOG)) == ["kv_cache"]
    got = lang.resolve(spec(("layers.*", "fp8"), kv_cache="bf16"), KV_CATALOG).precision_map()
    assert got["layers.0.kv_cache"] == "bf16" and got["layers.0.mlp.up_proj"] == "fp8"
    narrowed = spec(("layers.*", "fp8-tensor"), ("layers.*.kv_cache", "fp8"))
    assert lang.resolve(narrowed, KV_CATALOG).precision_map()["layers.1.kv_cache"] == "fp8"


def test_every_error_is_reported_in_one_pass():
    result = lang.resolve(spec(("nope.*", "fp9"), ("layers.*", "fp8"), ("x[", "bf16")), CATALOG)
    assert sorted(fields(result)) == ["rules[0].match", "rules[0].precision", "rules[2].match"]


@pytest.mark.parametrize(
    "name, ok",
    [("search-embedder", True), ("a", True), ("a" * 63, True), ("a" * 64, False), ("Search", False),
     ("-lead", False), ("trail-", False), ("under_score", False), ("", False), ("dot.ted", False)],
)
def test_endpoint_names_are_lowercase_dns_labels(name, ok):
    assert (lang.endpoint_name_errors(name) == []) is ok


def test_catalog_rejects_duplicates_and_bad_names():
    errors = lang.catalog_errors(["a.b", "a.b", "bad name", "x..y"])
    assert [e.field for e in errors] == ["layers[1]", "layers[2]", "layers[3]"]
    assert "duplicate layer name 'a.b'" in errors[0].message


def test_base_precision_must_suit_kv_cache_layers():
    assert lang.base_precision_errors("fp8-tensor", KV_CATALOG)[0].field == "base_precision"
    assert lang.base_precision_errors("fp8-tensor", CATALOG) == []
    assert "unknown precision" in lang.base_precision_errors("int4", CATALOG)[0].message


def test_policy_file_round_trip_and_shape_errors(tmp_path):
    original = spec(("layers.*.mlp.*", "fp8"), ("layers.0.*", "bf16"), kv_cache="fp8")
    path = tmp_path / "p.yaml"
    path.write_text(lang.dump_policy(original))
    assert lang.load_policy_file(str(path)) == original
    bad_documents = {
        "rules: {match: x}": "rules",
        "rules:\n  - {match: x}": "rules[0]",
        "rules:\n  - {match: x, precision: fp8, extra: 1}": "rules[0]",
        "rule: []": "policy.rule",
        "rules: [": "policy",
        "- a": "policy",
        "rules:\n  - {match: 3, precision: fp8}": "rules[0]",
    }
    for text, field in bad_documents.items():
        with pytest.raises(InvalidArgument) as caught:
            lang.load_policy_text(text)
        assert caught.value.errors[0].field == field, text
    with pytest.raises(InvalidArgument, match="cannot read"):
        lang.load_policy_file(str(tmp_path / "missing.yaml"))


def test_diff_maps_lists_only_changed_layers_in_catalog_order():
    old = lang.all_base(CATALOG)
    new = dict(old, **{"pooler.dense": "fp8", "layers.0.attention.q_proj": "fp8-tensor"})
    assert lang.diff_maps(CATALOG, old, new) == [
        ("layers.0.attention.q_proj", "bf16", "fp8-tensor"),
        ("pooler.dense", "bf16", "fp8"),
    ]


# --- properties of resolution -------------------------------------------------------------------

_parts = st.sampled_from(["layers", "0", "1", "2", "mlp", "attention", "q_proj", "up_proj", "head", "dense"])
layer_names = st.lists(_parts, min_size=1, max_size=4).map(".".join)
catalogs = st.lists(layer_names, min_size=1, max_size=25, unique=True)
precisions = st.sampled_from(lang.PRECISIONS)


@st.composite
def catalog_and_rules(draw):
    catalog = draw(catalogs)
    rules = []
    for _ in range(draw(st.integers(0, 6))):
        layer = draw(st.sampled_from(catalog))
        parts = layer.split(".")
        # A glob made from a real layer: some parts replaced by '*' or '?'-ed, so it matches >= 1 layer.
        pattern = ".".join(
            draw(st.sampled_from([p, "*", p[:-1] + "?" if len(p) > 1 else "?"])) for p in parts
        )
        rules.append((pattern, draw(precisions)))
    return catalog, rules


@settings(max_examples=300, deadline=None)
@given(catalog_and_rules(), st.sampled_from(lang.PRECISIONS))
def test_resolution_equals_last_matching_rule_or_base(case, base):
    catalog, rules = case
    result = lang.resolve(spec(*rules), catalog, base)
    assert result.valid, result.errors
    got = result.precision_map()
    assert list(got) == catalog  # one precision per layer, in catalog order
    for layer in catalog:
        matching = [p for m, p in rules if fnmatch.fnmatchcase(layer, m)]
        assert got[layer] == (matching[-1] if matching else base)


@settings(max_examples=200, deadline=None)
@given(catalog_and_rules(), precisions)
def test_appending_a_rule_changes_only_the_layers_it_matches(case, precision):
    catalog, rules = case
    before = lang.resolve(spec(*rules), catalog).precision_map()
    target = catalog[0]
    after = lang.resolve(spec(*rules, (target, precision)), catalog).precision_map()
    assert after[target] == precision
    assert {k: v for k, v in after.items() if k != target} == {k: v for k, v in before.items() if k != target}


@settings(max_examples=200, deadline=None)
@given(catalogs, st.text(min_size=1, max_size=12))
def test_any_pattern_is_either_rejected_with_a_field_or_matches_something(catalog, pattern):
    result = lang.resolve(spec((pattern, "fp8")), catalog)
    if result.valid:
        assert any(fnmatch.fnmatchcase(layer, pattern) for layer in catalog)
    else:
        assert all(e.field.startswith("rules[0]") for e in result.errors)


# --- writing policies back from maps ----------------------------------------------------------------


def test_compact_rules_use_group_patterns_where_a_group_agrees():
    target = {layer: "fp8" if ".mlp." in layer or layer == "layers.2.attention.q_proj" else "bf16"
              for layer in CATALOG}
    spec = lang.compact_rules(target)
    assert spec.rules == (lang.Rule("layers.*.mlp.*", "fp8"), lang.Rule("layers.2.attention.q_proj", "fp8"))
    assert lang.resolve(spec, CATALOG).precision_map() == target


def test_compact_rules_of_all_base_is_empty_and_of_all_fp8_is_two_rules():
    assert lang.compact_rules(lang.all_base(CATALOG)).rules == ()
    spec = lang.compact_rules({layer: "fp8" for layer in CATALOG})
    assert [r.match for r in spec.rules] == ["layers.*", "pooler.dense"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(lang.PRECISIONS), min_size=len(CATALOG), max_size=len(CATALOG)))
def test_compact_rules_always_resolve_back_to_the_map(precisions):
    target = dict(zip(CATALOG, precisions, strict=True))
    spec = lang.compact_rules(target)
    assert lang.resolve(spec, CATALOG).precision_map() == target
    assert len(spec.rules) <= sum(p != "bf16" for p in precisions)


def test_stage_maps_move_groups_one_stage_at_a_time():
    target = {layer: "fp8" for layer in CATALOG}
    mlp, both = lang.stage_maps(target, ["mlp", "attention"])
    assert {layer for layer, p in mlp.items() if p == "fp8"} == {layer for layer in CATALOG if ".mlp." in layer}
    assert both["layers.0.attention.k_proj"] == "fp8" and both["pooler.dense"] == "bf16"
    with pytest.raises(InvalidArgument, match=r"stages\[1\]"):
        lang.stage_maps(target, ["mlp", "conv"])
