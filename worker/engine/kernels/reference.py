"""The reference path: eager torch on any device, and the only path on CPU (unless Triton's
interpreter is asked for). What the fused kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.engine.fp8 import dequantize, quantize


def quantize_2d(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> e4m3 codes and scales (M, 1) per token, or () per tensor."""
    return quantize(x, rowwise=per_token)


def emulated_linear(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The FP8 product without an FP8 GEMM: both operands dequantized into `dtype` and multiplied."""
    return F.linear(dequantize(xq, x_scale, dtype), dequantize(wq, w_scale, dtype), bias)


def weight_only_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 weights in memory, the whole weight dequantized into the activation's dtype per call."""
    return F.linear(x, dequantize(wq, w_scale, x.dtype), bias)


def decode_attention(query: torch.Tensor, key_codes: torch.Tensor, key_scales: torch.Tensor,
                     value_codes: torch.Tensor, value_scales: torch.Tensor, lengths: torch.Tensor,
                     scaling: float, softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    """One query token per sequence over FP8 K/V, dequantized then attended in float32 (the Triton
    decode-attention kernel's reference; shapes as there): keys at [lengths - window, lengths)."""
    heads, kv_heads = query.shape[1], key_codes.shape[1]
    keys = dequantize(key_codes, key_scales).repeat_interleave(heads // kv_heads, dim=1)
    values = dequantize(value_codes, value_scales).repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("bhd,bhtd->bht", query.float(), keys) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    position = torch.arange(keys.shape[2], device=query.device)
    ends = lengths.to(query.device).long()[:, None]
    valid = (position < ends) & ((position >= ends - window) if window else True)
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bht,bhtd->bhd", scores.softmax(-1), values).to(query.dtype)
