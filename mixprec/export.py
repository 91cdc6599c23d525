"""A precision map as the quantization config a serving engine reads, in the model's own module names.

Torch-free (the CLI runs it): `compressed-tensors` (vLLM, SGLang) and ModelOpt's `hf_quant_config.json`
(TensorRT-LLM, vLLM, SGLang). Engines run fused layers (q/k/v, gate/up) as one GEMM at one precision,
so a map that splits a fused group is refused, naming the group; so are settings a format cannot
express (one KV-cache precision for the whole model; FP8 weight-only in ModelOpt).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping

from mixprec import __version__
from mixprec.errors import FieldError, InvalidArgument
from mixprec.families import Family, is_kv_cache

FORMATS = ("compressed-tensors", "modelopt")
FP8_PRECISIONS = ("fp8", "fp8-tensor", "fp8-weight-only")

_FP8 = {"num_bits": 8, "type": "float", "symmetric": True}
# compressed-tensors schemes of mixprec's precisions (weights / activations as mixprec computes them).
CT_SCHEMES: dict[str, dict] = {
    "fp8": {"weights": {**_FP8, "strategy": "channel", "dynamic": False},
            "input_activations": {**_FP8, "strategy": "token", "dynamic": True}},
    "fp8-tensor": {"weights": {**_FP8, "strategy": "tensor", "dynamic": False},
                   "input_activations": {**_FP8, "strategy": "tensor", "dynamic": True}},
    "fp8-weight-only": {"weights": {**_FP8, "strategy": "channel", "dynamic": False}, "input_activations": None},
}
CT_KV_CACHE = {**_FP8, "strategy": "tensor", "dynamic": False}
# ModelOpt / TensorRT-LLM quantization algorithms of mixprec's precisions.
MODELOPT_ALGOS = {"fp8": "FP8_PER_CHANNEL_PER_TOKEN", "fp8-tensor": "FP8"}


@dataclass(frozen=True)
class Export:
    filename: str
    config: dict
    fp8_modules: int
    base_modules: int
    kv_cache: str  # "fp8", "bf16" or "" (the family has no KV cache)


def _checked(family: Family, precision_map: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], str]:
    """(module -> precision of every linear layer, canonical -> module, KV-cache precision)."""
    split = family.split_groups(precision_map)
    if split:
        errors = [FieldError("precision_map", f"fused group {' + '.join(layers)} runs at "
                             f"{' / '.join(precisions)}; serving engines run it as one GEMM at one precision")
                  for layers, precisions in split]
        errors.append(FieldError("precision_map", "give every layer of a fused group the same precision, e.g. "
                                 "one rule for layers.*.attention.[qkv]_proj"))
        raise InvalidArgument(errors)
    kv = {precision_map[layer] for layer in precision_map if is_kv_cache(layer)}
    if len(kv) > 1:
        counts = ", ".join(f"{sum(p == q for layer, p in precision_map.items() if is_kv_cache(layer))} {q}"
                           for q in sorted(kv))
        raise InvalidArgument(FieldError("kv_cache", f"KV caches run at mixed precisions ({counts}); the exported "
                                         "formats hold one KV-cache precision for the whole model"))
    modules = {layer: family.module_name(layer) for layer in precision_map if not is_kv_cache(layer)}
    by_module = {modules[layer]: precision for layer, precision in precision_map.items() if layer in modules}
    kv_cache = next(iter(kv), "")
    return by_module, modules, "fp8" if kv_cache == "fp8" else ("bf16" if kv_cache else "")


def compressed_tensors(family: Family, precision_map: Mapping[str, str]) -> Export:
    """`quantization_config` of a Hugging Face config.json, as compressed-tensors defines it."""
    by_module, _, kv_cache = _checked(family, precision_map)
    targets: dict[str, list[str]] = defaultdict(list)
    for module, precision in by_module.items():
        if precision in FP8_PRECISIONS:
            targets[precision].append(module)
    groups = {
        f"group_{i}": {"targets": modules, **CT_SCHEMES[precision], "output_activations": None,
                       "format": "float-quantized"}
        for i, (precision, modules) in enumerate((p, targets[p]) for p in FP8_PRECISIONS if targets[p])
    }
    base = [m for m, p in by_module.items() if p not in FP8_PRECISIONS] + list(family.at_base)
    config = {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": base,
        "kv_cache_scheme": dict(CT_KV_CACHE) if kv_cache == "fp8" else None,
    }
    fp8 = sum(len(m) for m in targets.values())
    return Export("quantization_config.json", config, fp8, len(by_module) - fp8, kv_cache)


def modelopt(family: Family, precision_map: Mapping[str, str]) -> Export:
    """ModelOpt's `hf_quant_config.json` with `quant_algo: MIXED_PRECISION` and per-layer algorithms."""
    by_module, modules, kv_cache = _checked(family, precision_map)
    weight_only = [layer for layer, module in modules.items() if by_module[module] == "fp8-weight-only"]
    if weight_only:
        raise InvalidArgument(FieldError("precision_map", f"{len(weight_only)} layer(s) run fp8-weight-only "
                                         f"(e.g. {weight_only[0]}), which ModelOpt has no algorithm for; export "
                                         "them with --format compressed-tensors or choose fp8 / fp8-tensor"))
    quantized = {m: {"quant_algo": MODELOPT_ALGOS[p]} for m, p in by_module.items() if p in MODELOPT_ALGOS}
    config = {
        "producer": {"name": "mixprec", "version": __version__},
        "quantization": {
            "quant_algo": "MIXED_PRECISION",
            "kv_cache_quant_algo": "FP8" if kv_cache == "fp8" else None,
            "quantized_layers": quantized,
            "exclude_modules": [m for m in by_module if m not in quantized] + list(family.at_base),
        },
    }
    return Export("hf_quant_config.json", config, len(quantized), len(by_module) - len(quantized), kv_cache)


def export(fmt: str, family: Family, precision_map: Mapping[str, str]) -> Export:
    if fmt == "compressed-tensors":
        return compressed_tensors(family, precision_map)
    if fmt == "modelopt":
        return modelopt(family, precision_map)
    raise InvalidArgument(FieldError("format", f"{fmt!r}: choose {' or '.join(FORMATS)}"))
