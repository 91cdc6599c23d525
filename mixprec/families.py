"""Model families: canonical layer names against each family's own module names, as plain data.

Torch-free, so that the CLI (e.g. exporting a map in a serving engine's own module names) and the
worker's adapters read one table. A family names, per block, which module each canonical layer is,
which layers serving engines fuse into one GEMM (a map must not split those to be exported), and
which modules stay at base and are not in the catalog at all (embeddings, the output head).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from mixprec.errors import FieldError, InvalidArgument

KV_CACHE = "kv_cache"  # the canonical part naming a block's KV cache: layers.{i}.kv_cache
_BLOCK_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    block: str  # module path of block i, with "{i}"
    parts: Mapping[str, str]  # canonical part -> module path inside the block, in catalog order
    fused: tuple[tuple[str, ...], ...]  # canonical parts that serving engines run as one fused GEMM
    at_base: Mapping[str, str]  # module path -> why it is not in the catalog and stays at base
    kv_cache: str | None = None  # module inside a block that owns its KV cache; None: no KV cache

    def layer_map(self, num_layers: int) -> dict[str, str]:
        """Canonical name -> module path for every catalog layer, in model order. A KV cache maps to the
        attention module that keeps it."""
        out = {}
        for i in range(num_layers):
            block = self.block.format(i=i)
            for part, path in self.parts.items():
                out[f"layers.{i}.{part}"] = f"{block}.{path}"
            if self.kv_cache:
                out[f"layers.{i}.{KV_CACHE}"] = f"{block}.{self.kv_cache}"
        return out

    def linear_map(self, num_layers: int) -> dict[str, str]:
        """`layer_map` without the KV caches: the linear layers only."""
        return {name: path for name, path in self.layer_map(num_layers).items() if not is_kv_cache(name)}

    def catalog(self, num_layers: int) -> list[str]:
        return list(self.layer_map(num_layers))

    def module_name(self, layer: str) -> str:
        """The module path of one canonical layer (e.g. for an exported config)."""
        index, part = split_block_layer(layer)
        if part == KV_CACHE and self.kv_cache:
            return f"{self.block.format(i=index)}.{self.kv_cache}"
        if part not in self.parts:
            known = ", ".join([*self.parts, *([KV_CACHE] if self.kv_cache else [])])
            raise InvalidArgument(FieldError("layer", f"{layer!r} is not a {self.name} layer; a block has {known}"))
        return f"{self.block.format(i=index)}.{self.parts[part]}"

    def fused_groups(self, num_layers: int) -> list[tuple[str, ...]]:
        """Every fused group of the model, as canonical names (q/k/v of block 0, gate/up of block 0, ...)."""
        return [tuple(f"layers.{i}.{part}" for part in group) for i in range(num_layers) for group in self.fused]

    def split_groups(self, precision_map: Mapping[str, str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """The fused groups that `precision_map` (canonical name -> precision, every layer of the catalog)
        runs at more than one precision, each with its layers' precisions in group order."""
        blocks = sorted({int(m.group(1)) for m in map(_BLOCK_LAYER.fullmatch, precision_map) if m})
        split = []
        for i in blocks:
            for group in self.fused:
                layers = tuple(f"layers.{i}.{part}" for part in group)
                precisions = [precision_map[layer] for layer in layers if layer in precision_map]
                if len(set(precisions)) > 1:
                    split.append((layers, precisions))
        return split

    def fused_group_of(self, layer: str) -> tuple[str, ...]:
        """The fused group `layer` belongs to, or the layer alone."""
        index, part = split_block_layer(layer)
        for group in self.fused:
            if part in group:
                return tuple(f"layers.{index}.{p}" for p in group)
        return (layer,)


# Canonical parts that every family's serving engines fuse (a family's `fused` is a subset), and the name
# of the fused unit: layers.3.attention.{q,k,v}_proj -> layers.3.attention.qkv_proj.
FUSED_UNITS = {("attention.q_proj", "attention.k_proj", "attention.v_proj"): "attention.qkv_proj",
               ("mlp.gate_proj", "mlp.up_proj"): "mlp.gate_up_proj"}


def fused_unit_name(layer: str) -> str:
    """The fused unit a canonical layer belongs to (e.g. 'layers.3.mlp.gate_up_proj'), or the layer itself."""
    match = _BLOCK_LAYER.fullmatch(layer)
    if match:
        for parts, name in FUSED_UNITS.items():
            if match.group(2) in parts:
                return f"layers.{match.group(1)}.{name}"
    return layer


def is_kv_cache(layer: str) -> bool:
    return layer.endswith("." + KV_CACHE)


def split_block_layer(layer: str) -> tuple[int, str]:
    """'layers.3.attention.q_proj' -> (3, 'attention.q_proj')."""
    match = _BLOCK_LAYER.fullmatch(layer)
    if not match:
        raise InvalidArgument(FieldError("layer", f"{layer!r} is not a block layer 'layers.{{i}}.<part>'"))
    return int(match.group(1)), match.group(2)


BERT = Family(
    name="bert",
    description="BERT-style encoder (MiniLM)",
    block="encoder.layer.{i}",
    parts=MappingProxyType({
        "attention.q_proj": "attention.self.query",
        "attention.k_proj": "attention.self.key",
        "attention.v_proj": "attention.self.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.up_proj": "intermediate.dense",
        "mlp.down_proj": "output.dense",
    }),
    fused=(("attention.q_proj", "attention.k_proj", "attention.v_proj"),),
    at_base=MappingProxyType({
        "embeddings": "token, position and type embeddings",
        "pooler": "not used by mean-pooled sentence embeddings",
    }),
)

LLAMA = Family(
    name="llama",
    description="Llama-style decoder (Llama, Mistral, Qwen2/3, Gemma 2/3)",
    block="model.layers.{i}",
    parts=MappingProxyType({
        "attention.q_proj": "self_attn.q_proj",
        "attention.k_proj": "self_attn.k_proj",
        "attention.v_proj": "self_attn.v_proj",
        "attention.o_proj": "self_attn.o_proj",
        "mlp.gate_proj": "mlp.gate_proj",
        "mlp.up_proj": "mlp.up_proj",
        "mlp.down_proj": "mlp.down_proj",
    }),
    fused=(("attention.q_proj", "attention.k_proj", "attention.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    at_base=MappingProxyType({
        "model.embed_tokens": "token embeddings",
        "lm_head": "the full-vocabulary output head: FP8 there would touch every token's logits",
    }),
    kv_cache="self_attn",
)

FAMILIES: dict[str, Family] = {family.name: family for family in (BERT, LLAMA)}

# Named models and the family each belongs to; `hf:PATH` is any local Llama-style causal LM.
MODELS: dict[str, str] = {"minilm": BERT.name, "gemma3-270m": LLAMA.name, "tiny-llama": LLAMA.name}
HF_PREFIX = "hf:"
# Architectures whose blocks use the Llama-style names, as transformers and GGUF files spell them.
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                       "Gemma2ForCausalLM", "Gemma3ForCausalLM")
LLAMA_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
LLAMA_MODEL_TYPES = (*LLAMA_GGUF_ARCHITECTURES, "gemma3_text")  # config.json's model_type, where architectures is empty


def family_of(model: str) -> Family | None:
    """The family of a `--model` value; None for a user factory (`package.module:factory`)."""
    if model in MODELS:
        return FAMILIES[MODELS[model]]
    if model.startswith(HF_PREFIX):
        return LLAMA
    return None
