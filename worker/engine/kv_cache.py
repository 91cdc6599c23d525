"""KV-cache precision: per layer, K and V kept in the base dtype or as float8_e4m3fn with dynamic scales.

FP8 layers keep one float32 scale per token and KV head (amax over head_dim / 448), computed as each
token is written: a fixed scale of 1.0 is known to hurt perplexity, and a per-tensor scale fixed at
prefill would clip later tokens. A cache's precisions are fixed when it is built, so one request keeps
the map it started with across all its decode steps.

Each request gets one slot: per layer, K and V buffers allocated once for the request's longest
sequence (prompt + max_tokens; a sliding-window layer only its window, as a ring) and written in place,
never concatenated. An FP8 buffer is one uint8 tensor per K and V whose rows are a token-head's
head_dim e4m3 codes followed by its float32 scale: the same bytes a token took before, in one
allocation, and a single tensor that attention can receive. What attention reads:

* the prompt (the first write): the states themselves (FP8: quantized and dequantized, as stored);
* a decode step, base dtype: views of the filled part of the buffers, no copy;
* a decode step, FP8, where the decode-attention kernel runs (worker.engine.kv_attention): the packed
  buffers themselves, read as codes and scales inside the kernel; elsewhere the filled part dequantized.

Batching several slots in one step and capturing a step in a CUDA graph need only what is already
here: buffers of fixed shape and address per slot, lengths kept per slot, a kernel that takes the
lengths as a tensor.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, get_layer_types_and_kwargs

from mixprec.policy import KV_CACHE_PRECISIONS as KV_PRECISIONS
from worker.engine.fp8 import E4M3_MAX, FP8, dequantize  # codes read back as the weights' are

SCALE_DTYPE = torch.float32
SCALE_BYTES = torch.finfo(SCALE_DTYPE).bits // 8
PACKED = torch.uint8  # an FP8 layer's buffers: codes then the scale, per token and KV head
FULL, SLIDING = "full_attention", "sliding_attention"


def quantize(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, heads, tokens, head_dim) -> e4m3 codes and (batch, heads, tokens, 1) float32 scales."""
    amax = states.detach().abs().amax(dim=-1, keepdim=True).to(SCALE_DTYPE)
    scales = (amax / E4M3_MAX).clamp(min=torch.finfo(SCALE_DTYPE).tiny)
    codes = (states.to(SCALE_DTYPE) / scales).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return codes, scales


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed FP8 buffer (..., head_dim + 4) uint8 -> views of its codes (..., head_dim) e4m3 and its
    scales (..., 1) float32 (no copy)."""
    head_dim = packed.shape[-1] - SCALE_BYTES
    return packed[..., :head_dim].view(FP8), packed[..., head_dim:].view(SCALE_DTYPE)


def dequantize_packed(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    codes, scales = unpack(packed)
    return dequantize(codes, scales, dtype)


class SlotLayer(CacheLayerMixin):
    """One layer's K and V for one request slot, at one precision, in buffers allocated on the first
    write (when dtype and device are known) and written in place from then on.

    `capacity`: the most tokens the request will store (None: exactly what the first write brings, for
    a single forward). A sliding-window layer holds min(capacity, window) tokens in a ring: a decode
    step then attends to every slot, the window's last tokens, exactly the ones the model's own sliding
    layer would hand it (BF16 views and the kernel read them in ring order, equal up to rounding).
    """

    def __init__(self, precision: str, capacity: int | None, window: int | None = None,
                 reads_codes: bool = False):
        super().__init__()
        self.precision, self.capacity, self.window = precision, capacity, window
        self.is_sliding = window is not None
        self.sliding_window = window
        self.reads_codes = reads_codes and precision == "fp8"
        self.seen = 0  # tokens written so far (a sliding layer keeps only the last `slots` of them)
        self.slots = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, tokens, head_dim = key_states.shape
        capacity = self.capacity or tokens
        self.slots = min(capacity, self.window) if self.is_sliding else capacity
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.precision == "fp8":
            if head_dim % SCALE_BYTES:
                raise ValueError(f"an FP8 KV cache needs head_dim a multiple of {SCALE_BYTES}, not {head_dim}")
            shape, dtype = (batch, heads, self.slots, head_dim + SCALE_BYTES), PACKED
        else:
            shape, dtype = (batch, heads, self.slots, head_dim), key_states.dtype
        self.keys = torch.zeros(shape, dtype=dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new, start = key_states.shape[-2], self.seen
        if not self.is_sliding and start + new > self.slots:
            raise RuntimeError(f"this KV cache slot holds {self.slots} tokens; {start} are stored and {new} more came")
        # A sliding layer given several tokens after others (a chunked prompt) attends to the window's
        # earlier tokens too: read them, in order, before this write may overwrite them.
        earlier = self._ordered_window() if self.is_sliding and start and new > 1 else None
        if self.precision == "fp8":
            fresh = [quantize(states) for states in (key_states, value_states)]
            for buffer, (codes, scales) in zip((self.keys, self.values), fresh, strict=True):
                self._store(buffer, torch.cat([codes.view(PACKED), scales.view(PACKED)], dim=-1), start)
            fresh = [dequantize(codes, scales, key_states.dtype) for codes, scales in fresh]
        else:
            fresh = [key_states, value_states]
            for buffer, states in zip((self.keys, self.values), fresh, strict=True):
                self._store(buffer, states.detach(), start)
        self.seen += new
        if start == 0:
            return fresh[0], fresh[1]
        if earlier is not None:
            return (torch.cat([earlier[0], fresh[0]], dim=-2), torch.cat([earlier[1], fresh[1]], dim=-2))
        return self._visible(new)

    def _visible(self, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What a later step's attention reads: the filled slots (packed FP8 ones where the kernel reads
        codes, at one token a step); dequantized ones oldest first, in the model's own cache's order (an
        FP8 rounding downstream would turn a different summation order into different codes)."""
        filled = min(self.seen, self.slots)
        buffers = (self.keys, self.values)
        if self.precision != "fp8" or (self.reads_codes and new == 1):
            return tuple(buffer[:, :, :filled] for buffer in buffers)
        if self.seen > self.slots:  # a ring that wrapped
            index = self._slots_of(self.seen - filled, self.seen)
            return tuple(dequantize_packed(buffer.index_select(2, index), self.dtype) for buffer in buffers)
        return tuple(dequantize_packed(buffer[:, :, :filled], self.dtype) for buffer in buffers)

    def _slots_of(self, first: int, end: int) -> torch.Tensor:
        return torch.arange(first, end, device=self.device) % self.slots

    def _store(self, buffer: torch.Tensor, rows: torch.Tensor, start: int) -> None:
        """Writes rows (batch, heads, n, width) for positions start..start+n-1 in place (a ring wraps)."""
        end = start + rows.shape[-2]
        first = max(start, end - self.slots)  # earlier ones a ring would overwrite within this write
        rows = rows[:, :, first - start:]
        at = first % self.slots
        if at + rows.shape[-2] <= self.slots:
            buffer.narrow(2, at, rows.shape[-2]).copy_(rows)
        else:
            buffer.index_copy_(2, self._slots_of(first, end), rows)

    def _ordered_window(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last window-1 stored tokens of a sliding layer, oldest first, as attention reads them."""
        kept = min(self.seen, self.window - 1, self.slots)
        index = self._slots_of(self.seen - kept, self.seen)
        pair = [buffer.index_select(2, index) for buffer in (self.keys, self.values)]
        return tuple(dequantize_packed(t, self.dtype) if self.precision == "fp8" else t for t in pair)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if not self.is_sliding:
            return self.seen + query_length, 0
        # What the model's own sliding layer reports: the window's last tokens plus the new ones.
        kv_offset = max(self.seen - self.window + 1, 0)
        if self.seen >= self.window:
            return self.window - 1 + query_length, kv_offset
        return self.seen + query_length, kv_offset

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.window if self.is_sliding else (self.slots or -1)

    def reset(self) -> None:
        self.seen = 0

    def bytes_per_token(self) -> int:
        """Bytes one token takes in this layer's K and V buffers (all batch rows)."""
        if not self.is_initialized:
            return 0
        return 2 * self.keys[:, :, :1].numel() * self.keys.element_size()

    def nbytes(self) -> int:
        """Bytes of the tokens held now (what the model's own cache would hold)."""
        return min(self.seen, self.slots) * self.bytes_per_token()

    def allocated_bytes(self) -> int:
        return self.slots * self.bytes_per_token()


class PrecisionCache(Cache):
    """A request slot's KV cache: one SlotLayer per decoder layer, at the precisions of the map the
    request started with, sliding-window layers where the model's config has them."""

    def __init__(self, config, precisions: Sequence[str], capacity: int | None = None, reads_codes: bool = False):
        layer_types, layer_kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        if len(precisions) != len(layer_types):
            raise ValueError(f"{len(precisions)} KV precisions for {len(layer_types)} cache layers")
        for precision in precisions:
            if precision not in KV_PRECISIONS:
                raise ValueError(f"KV precision {precision!r} is not one of {', '.join(KV_PRECISIONS)}")
        unknown = sorted(set(layer_types) - {FULL, SLIDING})
        if unknown:
            raise ValueError(f"attention layer types {unknown} have no KV cache slot here; supported: {FULL}, {SLIDING}")
        self.precisions = tuple(precisions)
        super().__init__(layers=[
            SlotLayer(precision, capacity, kwargs.get("sliding_window") if kind == SLIDING else None, reads_codes)
            for precision, kind, kwargs in zip(self.precisions, layer_types, layer_kwargs, strict=True)])

    def nbytes(self) -> int:
        """Bytes of the tokens the cache holds now (codes and scales for FP8 layers)."""
        return sum(layer.nbytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        """Bytes the cache's buffers take (allocated for the request's longest sequence)."""
        return sum(layer.allocated_bytes() for layer in self.layers)

    @staticmethod
    def bytes_per_token(precision: str, kv_heads: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes one token's K and V take in one layer at `precision` (base: in `dtype`)."""
        if precision == "fp8":
            return 2 * kv_heads * (head_dim * torch.finfo(FP8).bits // 8 + SCALE_BYTES)
        return 2 * kv_heads * head_dim * torch.finfo(dtype).bits // 8
