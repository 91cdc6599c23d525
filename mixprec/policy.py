"""The policy language: canonical layer names, glob rules, precisions, resolution.

A policy is an ordered list of rules ``match -> precision`` plus the endpoint's base precision.
``match`` is an ``fnmatch`` glob over canonical layer names (case-sensitive, ``*`` crosses dots).
The last matching rule wins; a layer no rule matches runs at the base precision. An optional
``kv_cache`` precision applies to every ``*.kv_cache`` layer after the rules.

Everything here is pure Python: the control plane and the worker both use it, and neither the
server nor the CLI may import torch through it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import yaml

from mixprec.documents import load_yaml, short_repr
from mixprec.errors import FieldError, InvalidArgument

PRECISIONS: tuple[str, ...] = ("bf16", "fp8", "fp8-tensor", "fp8-weight-only")
BASE_PRECISION = "bf16"
KV_CACHE_PRECISIONS: tuple[str, ...] = ("bf16", "fp8")

MAX_NAME_LENGTH = 63
MAX_RULES = 1000
MAX_CATALOG = 100_000
MAX_PATTERN_LENGTH = 256
MAX_LAYER_NAME = 200
# Resolving checks every rule against every layer: beyond this many checks a policy is refused, so
# one request's matching time stays bounded (about a second on one core).
MAX_MATCH_CHECKS = 2_000_000

# Rule index recorded for a layer decided by no rule / by the kv_cache setting.
NO_RULE = 0
KV_CACHE_RULE = -1

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LAYER_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


@dataclass(frozen=True)
class Rule:
    match: str
    precision: str


@dataclass(frozen=True)
class PolicySpec:
    """What a user writes: the rules and the optional kv_cache precision."""

    rules: tuple[Rule, ...] = ()
    kv_cache: str = ""


@dataclass(frozen=True)
class ResolvedLayer:
    layer: str
    precision: str
    rule: int  # 1-based rule index, NO_RULE or KV_CACHE_RULE


@dataclass
class Resolution:
    layers: list[ResolvedLayer] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    def precision_map(self) -> dict[str, str]:
        return {r.layer: r.precision for r in self.layers}


def is_kv_cache(layer: str) -> bool:
    return layer == "kv_cache" or layer.endswith(".kv_cache")


# --- validation of single values -------------------------------------------------------------


def endpoint_name_errors(name: str, field_name: str = "name") -> list[FieldError]:
    if not name:
        return [FieldError(field_name, "is required: a lowercase DNS label such as 'search-embedder'")]
    if len(name) > MAX_NAME_LENGTH:
        return [FieldError(field_name, f"{name!r} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")]
    if not _DNS_LABEL.match(name):
        return [
            FieldError(
                field_name,
                f"{name!r} is not a lowercase DNS label: use a-z, 0-9 and '-', "
                "starting and ending with a letter or digit",
            )
        ]
    return []


def precision_errors(value: str, field_name: str, allowed: Sequence[str] = PRECISIONS) -> list[FieldError]:
    if value not in allowed:
        return [FieldError(field_name, f"unknown precision {value!r}; choose one of {', '.join(allowed)}")]
    return []


def glob_matcher(pattern: str) -> Callable[[str], bool]:
    """fnmatch's case-sensitive meaning, compiled once per call site: unlike fnmatch.fnmatchcase it
    keeps no process-wide cache of compiled patterns that hostile callers could fill."""
    return re.compile(fnmatch.translate(pattern)).match


def pattern_errors(pattern: str, field_name: str) -> list[FieldError]:
    if not pattern or not pattern.strip():
        return [FieldError(field_name, "is empty: give a glob over canonical layer names, e.g. 'layers.*.mlp.*'")]
    if len(pattern) > MAX_PATTERN_LENGTH:
        return [FieldError(field_name, f"is {len(pattern)} characters long; the limit is {MAX_PATTERN_LENGTH}")]
    if not _PATTERN_CHARS.match(pattern):
        return [
            FieldError(
                field_name,
                f"{pattern!r} is malformed: a pattern may use letters, digits, '_', '.', '-' "
                "and the glob characters * ? [ ] !",
            )
        ]
    depth = 0
    for ch in pattern:
        if ch == "[":
            if depth:
                return [FieldError(field_name, f"{pattern!r} is malformed: '[' inside a [...] set")]
            depth = 1
        elif ch == "]":
            if not depth:
                return [FieldError(field_name, f"{pattern!r} is malformed: ']' without a matching '['")]
            depth = 0
    if depth:
        return [FieldError(field_name, f"{pattern!r} is malformed: '[' is never closed")]
    if "[]" in pattern or "[!]" in pattern:
        return [FieldError(field_name, f"{pattern!r} is malformed: an empty [...] set")]
    return []


def catalog_errors(layers: Sequence[str], field_name: str = "layers") -> list[FieldError]:
    errors: list[FieldError] = []
    if len(layers) > MAX_CATALOG:
        return [FieldError(field_name, f"has {len(layers)} layers; the limit is {MAX_CATALOG}")]
    seen: set[str] = set()
    for i, layer in enumerate(layers):
        if len(layer) > MAX_LAYER_NAME:
            errors.append(FieldError(f"{field_name}[{i}]", f"is {len(layer)} characters long; the limit is "
                                                            f"{MAX_LAYER_NAME}"))
        elif not _LAYER_NAME.match(layer):
            errors.append(
                FieldError(
                    f"{field_name}[{i}]",
                    f"{layer!r} is not a canonical layer name (dot-separated parts of letters, digits and '_')",
                )
            )
        elif layer in seen:
            errors.append(FieldError(f"{field_name}[{i}]", f"duplicate layer name {layer!r}"))
        seen.add(layer)
    return errors


def base_precision_errors(base: str, layers: Sequence[str], field_name: str = "base_precision") -> list[FieldError]:
    errors = precision_errors(base, field_name)
    if not errors and base not in KV_CACHE_PRECISIONS:
        kv = next((layer for layer in layers if is_kv_cache(layer)), None)
        if kv is not None:
            errors.append(
                FieldError(
                    field_name,
                    f"{base!r} cannot run kv_cache layers such as {kv!r}; use {' or '.join(KV_CACHE_PRECISIONS)}",
                )
            )
    return errors


def endpoint_errors(name: str, base: str, layers: Sequence[str]) -> list[FieldError]:
    return endpoint_name_errors(name) + catalog_errors(layers) + base_precision_errors(base, layers)


# --- resolution ---------------------------------------------------------------------------------


def resolve(spec: PolicySpec, catalog: Sequence[str], base: str = BASE_PRECISION) -> Resolution:
    """Resolve a policy against a layer catalog, collecting every validation error.

    The precision map is only meaningful when ``Resolution.valid`` is true.
    """
    result = Resolution()
    errors = result.errors
    if not catalog:
        errors.append(FieldError("layers", "the endpoint has no layer catalog yet; no rule can be checked"))
        return result
    if len(spec.rules) > MAX_RULES:
        errors.append(FieldError("rules", f"has {len(spec.rules)} rules; the limit is {MAX_RULES}"))
        return result
    if len(spec.rules) * len(catalog) > MAX_MATCH_CHECKS:
        errors.append(FieldError("rules", f"{len(spec.rules)} rules over {len(catalog)} layers is more than "
                                          f"{MAX_MATCH_CHECKS} pattern checks; use fewer, broader rules"))
        return result

    # A rule with a bad precision is still checked for matching, so one pass reports both.
    usable: list[tuple[int, Rule]] = []
    for i, rule in enumerate(spec.rules, start=1):
        where = f"rules[{i - 1}]"
        match_errors = pattern_errors(rule.match, f"{where}.match")
        errors.extend(match_errors + precision_errors(rule.precision, f"{where}.precision"))
        if not match_errors:
            usable.append((i, rule))
    if spec.kv_cache:
        errors.extend(precision_errors(spec.kv_cache, "kv_cache", KV_CACHE_PRECISIONS))

    decided: dict[str, tuple[str, int]] = {layer: (base, NO_RULE) for layer in catalog}
    for i, rule in usable:
        matches = glob_matcher(rule.match)
        matched = [layer for layer in catalog if matches(layer)]
        if not matched:
            errors.append(
                FieldError(
                    f"rules[{i - 1}].match",
                    f"{rule.match!r} matches no layer of the catalog ({_catalog_hint(catalog)})",
                )
            )
            continue
        for layer in matched:
            decided[layer] = (rule.precision, i)

    kv_layers = [layer for layer in catalog if is_kv_cache(layer)]
    if spec.kv_cache and spec.kv_cache in KV_CACHE_PRECISIONS:
        if not kv_layers:
            errors.append(FieldError("kv_cache", f"is {spec.kv_cache!r} but the catalog has no kv_cache layer"))
        for layer in kv_layers:
            decided[layer] = (spec.kv_cache, KV_CACHE_RULE)
    reported: set[int] = set()
    for layer in kv_layers:
        precision, rule_index = decided[layer]
        if precision in KV_CACHE_PRECISIONS or precision not in PRECISIONS or rule_index in reported:
            continue
        reported.add(rule_index)
        errors.append(
            FieldError(
                f"rules[{rule_index - 1}].precision",
                f"{precision!r} cannot run kv_cache layer {layer!r}; kv_cache layers take "
                f"{' or '.join(KV_CACHE_PRECISIONS)} (narrow the pattern or add a later rule)",
            )
        )

    if not errors:
        result.layers = [ResolvedLayer(layer, *decided[layer]) for layer in catalog]
    return result


def resolve_or_raise(spec: PolicySpec, catalog: Sequence[str], base: str = BASE_PRECISION) -> dict[str, str]:
    resolution = resolve(spec, catalog, base)
    if not resolution.valid:
        raise InvalidArgument(resolution.errors)
    return resolution.precision_map()


def diff_maps(catalog: Iterable[str], old: Mapping[str, str], new: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(layer, old precision, new precision) for each layer whose precision differs, in catalog order."""
    return [(layer, old[layer], new[layer]) for layer in catalog if old[layer] != new[layer]]


def all_base(catalog: Iterable[str], base: str = BASE_PRECISION) -> dict[str, str]:
    return {layer: base for layer in catalog}


def _catalog_hint(catalog: Sequence[str]) -> str:
    sample = ", ".join(catalog[:3])
    more = f", ... {len(catalog)} layers in all" if len(catalog) > 3 else ""
    return f"e.g. {sample}{more}"


# --- the YAML policy file -----------------------------------------------------------------------


def parse_policy_document(doc: object, source: str = "policy") -> PolicySpec:
    """Turn a parsed YAML/JSON document into a PolicySpec; shape errors name the field."""
    if not isinstance(doc, dict):
        raise InvalidArgument([FieldError(source, "must be a mapping with a 'rules:' list")])
    unknown = sorted(set(doc) - {"rules", "kv_cache"})
    if unknown:
        raise InvalidArgument(
            [FieldError(f"{source}.{key}", "is not a policy field; the fields are 'rules' and 'kv_cache'") for key in unknown]
        )
    rules_doc = doc.get("rules")
    if rules_doc is None:
        rules_doc = []
    if not isinstance(rules_doc, list):
        raise InvalidArgument([FieldError("rules", f"must be a list of {{match, precision}}, got {type(rules_doc).__name__}")])
    rules: list[Rule] = []
    errors: list[FieldError] = []
    for i, item in enumerate(rules_doc):
        if not isinstance(item, dict) or set(item) != {"match", "precision"}:
            errors.append(FieldError(f"rules[{i}]", f"must be {{match: GLOB, precision: NAME}}, got {short_repr(item)}"))
            continue
        if not isinstance(item["match"], str) or not isinstance(item["precision"], str):
            errors.append(FieldError(f"rules[{i}]", f"match and precision must be strings, got {short_repr(item)}"))
            continue
        rules.append(Rule(item["match"], item["precision"]))
    kv_cache = doc.get("kv_cache") or ""
    if not isinstance(kv_cache, str):
        errors.append(FieldError("kv_cache", f"must be a precision name, got {short_repr(kv_cache)}"))
    if errors:
        raise InvalidArgument(errors)
    return PolicySpec(tuple(rules), kv_cache)


def load_policy_text(text: str, source: str = "policy") -> PolicySpec:
    doc = load_yaml(text, source)  # bounded: size, depth, aliases
    return parse_policy_document(doc if doc is not None else {}, source)


MAX_POLICY_FILE = 1_000_000  # bytes; a policy is a few rules


def load_policy_file(path: str) -> PolicySpec:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_FILE + 1)
    except OSError as exc:
        raise InvalidArgument([FieldError("file", f"cannot read {path!r}: {exc.strerror}")]) from None
    if len(raw) > MAX_POLICY_FILE:
        raise InvalidArgument([FieldError("file", f"{path!r} is larger than the limit of {MAX_POLICY_FILE} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument([FieldError("file", f"{path!r} is not UTF-8 text (byte {exc.start})")]) from None
    spec = load_policy_text(text, source=path)
    if not spec.rules and not spec.kv_cache:
        raise InvalidArgument([FieldError("file", f"{path!r} has no rules and no kv_cache; to run every layer at "
                                                  "base, use `mixprec rollback ENDPOINT --to-base`")])
    return spec


def dump_policy(spec: PolicySpec) -> str:
    doc: dict[str, object] = {"rules": [{"match": r.match, "precision": r.precision} for r in spec.rules]}
    if spec.kv_cache:
        doc["kv_cache"] = spec.kv_cache
    return yaml.safe_dump(doc, sort_keys=False)


# --- writing policies from precision maps ---------------------------------------------------------

_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)$")


def candidate_patterns(catalog: Sequence[str]) -> list[str]:
    """Globs from the coarsest to the finest: all blocks, a kind across blocks, a leaf across blocks, a block."""
    kinds: dict[str, None] = {}
    leaves: dict[str, None] = {}
    blocks: dict[str, None] = {}
    for layer in catalog:
        m = _BLOCK.match(layer)
        if m:
            blocks[m.group(1)] = None
            leaves[m.group(2)] = None
            kinds[m.group(2).split(".")[0]] = None
    patterns = ["layers.*"] if blocks else []
    patterns += [f"layers.*.{kind}.*" for kind in kinds]
    patterns += [f"layers.*.{leaf}" for leaf in leaves]
    patterns += [f"layers.{block}.*" for block in blocks]
    return patterns


def compact_rules(precision_map: Mapping[str, str], base: str = BASE_PRECISION) -> PolicySpec:
    """The fewest-ish rules that resolve to `precision_map`: group patterns where a whole group agrees,
    single layers otherwise. Layers at base need no rule."""
    catalog = list(precision_map)
    covered: set[str] = set()
    rules: list[Rule] = []
    for pattern in candidate_patterns(catalog):
        matches = glob_matcher(pattern)
        matched = [layer for layer in catalog if matches(layer)]
        precisions = {precision_map[layer] for layer in matched}
        if len(precisions) == 1 and base not in precisions and not set(matched) <= covered:
            rules.append(Rule(pattern, precisions.pop()))
            covered.update(matched)
    for layer in catalog:
        if precision_map[layer] != base and layer not in covered:
            rules.append(Rule(layer, precision_map[layer]))
    spec = PolicySpec(tuple(rules))
    assert resolve(spec, catalog, base).precision_map() == dict(precision_map), "compact_rules is inconsistent"
    return spec


def stage_maps(precision_map: Mapping[str, str], stages: Sequence[str], base: str = BASE_PRECISION
               ) -> list[dict[str, str]]:
    """Cumulative maps that move `stages` (a kind such as 'mlp', or any glob) to their target one at a time."""
    maps = []
    moved: set[str] = set()
    for i, stage in enumerate(stages):
        # A bare word names a kind of block layer ('mlp', 'attention'); anything else is a glob.
        pattern = stage if any(ch in stage for ch in "*?[.") else f"layers.*.{stage}.*"
        errors = pattern_errors(pattern, f"stages[{i}]")
        if errors:
            raise InvalidArgument(errors)
        matches = glob_matcher(pattern)
        matched = {layer for layer in precision_map if matches(layer)}
        if not matched:
            raise InvalidArgument(FieldError(f"stages[{i}]", f"{stage!r} matches no layer of the catalog"))
        moved |= matched
        maps.append({layer: (p if layer in moved else base) for layer, p in precision_map.items()})
    return maps
