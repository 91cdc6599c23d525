"""KV-cache precision: per layer, K and V kept in the base dtype or as float8_e4m3fn with dynamic scales.

FP8 layers keep one float32 scale per token and KV head (amax over head_dim / 448), computed as each
token is written: a fixed scale of 1.0 is known to hurt perplexity, and a per-tensor scale fixed at
prefill would clip later tokens. A cache's precisions are fixed when it is built, so one request keeps
the map it started with across all its decode steps. Attention reads the dequantized states (on a GPU
an FP8 attention kernel would read the codes directly).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache

from mixprec.policy import KV_CACHE_PRECISIONS as KV_PRECISIONS
from worker.engine.fp8 import E4M3_MAX, FP8, dequantize  # codes read back as the weights' are

SCALE_DTYPE = torch.float32


def quantize(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, heads, tokens, head_dim) -> e4m3 codes and (batch, heads, tokens, 1) float32 scales."""
    amax = states.detach().abs().amax(dim=-1, keepdim=True).to(SCALE_DTYPE)
    scales = (amax / E4M3_MAX).clamp(min=torch.finfo(SCALE_DTYPE).tiny)
    codes = (states.to(SCALE_DTYPE) / scales).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return codes, scales


class FP8Layer(CacheLayerMixin):
    """One layer's cache as e4m3 codes plus scales. Two layers of the model's own cache type hold them,
    so growth and sliding-window trimming stay exactly the model's."""

    def __init__(self, codes, scales):
        super().__init__()
        self.codes, self.scales = codes, scales
        self.dtype: torch.dtype | None = None
        self.is_sliding = getattr(codes, "is_sliding", False)

    def lazy_initialization(self, key_states, value_states) -> None:
        """The two inner layers initialise themselves on their first update."""

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.codes.get_mask_sizes(query_length)

    def get_seq_length(self) -> int:
        return self.codes.get_seq_length()

    def get_max_length(self) -> int:
        return self.codes.get_max_length()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.dtype = key_states.dtype
        key_codes, key_scales = quantize(key_states)
        value_codes, value_scales = quantize(value_states)
        key_codes, value_codes = self.codes.update(key_codes, value_codes, *args, **kwargs)
        key_scales, value_scales = self.scales.update(key_scales, value_scales, *args, **kwargs)
        return dequantize(key_codes, key_scales, self.dtype), dequantize(value_codes, value_scales, self.dtype)

    def nbytes(self) -> int:
        return _nbytes(self.codes) + _nbytes(self.scales)


def _nbytes(layer) -> int:
    if getattr(layer, "keys", None) is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))


class PrecisionCache(DynamicCache):
    """The model's own dynamic cache, with the layers whose precision is fp8 stored as FP8Layer."""

    def __init__(self, config, precisions: Sequence[str]):
        super().__init__(config=config)
        if len(precisions) != len(self.layers):
            raise ValueError(f"{len(precisions)} KV precisions for {len(self.layers)} cache layers")
        self.precisions = tuple(precisions)
        for i, precision in enumerate(self.precisions):
            if precision == "fp8":
                kind = type(self.layers[i])
                self.layers[i] = FP8Layer(self.layers[i], _twin(self.layers[i], kind))
            elif precision not in KV_PRECISIONS:
                raise ValueError(f"KV precision {precision!r} is not one of {', '.join(KV_PRECISIONS)}")

    def nbytes(self) -> int:
        """Bytes the cache holds now (codes and scales for FP8 layers)."""
        return sum(layer.nbytes() if isinstance(layer, FP8Layer) else _nbytes(layer) for layer in self.layers)

    @staticmethod
    def bytes_per_token(precision: str, kv_heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes one token's K and V take in one layer at `precision` (base: in `dtype`)."""
        if precision == "fp8":
            return 2 * kv_heads * (head_dim * torch.finfo(FP8).bits // 8 + torch.finfo(SCALE_DTYPE).bits // 8)
        return 2 * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def _twin(layer, kind):
    """A fresh, empty cache layer of the same kind and window as `layer`."""
    window = getattr(layer, "sliding_window", None)
    return kind(sliding_window=window) if window is not None else kind()
