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
