"""FP8 matrix products: the real kernel (torch._scaled_mm) where the device has one, else emulation."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from worker.engine.fp8 import FP8, dequantize, quantize

SCALED_MM = "scaled_mm"
EMULATED = "emulated"
KERNELS = ("auto", SCALED_MM, EMULATED)


@functools.lru_cache(maxsize=None)
def scaled_mm_available(device: str) -> bool:
    """Whether torch._scaled_mm runs FP8 with row-wise scales here (CUDA sm89+, or torch's CPU build)."""
    if not hasattr(torch, "_scaled_mm"):
        return False
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (8, 9):
        return False
    try:
        a = torch.ones(16, 32, device=dev).to(FP8)
        b = torch.ones(16, 32, device=dev).to(FP8)
        out = torch._scaled_mm(a, b.t(), scale_a=torch.ones(16, 1, device=dev), scale_b=torch.ones(1, 16, device=dev),
                               out_dtype=torch.float32)
        return bool(torch.allclose(out, torch.full_like(out, 32.0)))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def resolve_kernel(requested: str, device: torch.device) -> str:
    if requested not in KERNELS:
        raise ValueError(f"kernel {requested!r} is not one of {', '.join(KERNELS)}")
    if requested == EMULATED:
        return EMULATED
    available = scaled_mm_available(str(device))
    if requested == SCALED_MM and not available:
        raise ValueError(f"kernel 'scaled_mm' was requested but torch._scaled_mm cannot run FP8 on {device}")
    return SCALED_MM if available else EMULATED


def fp8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               per_token: bool, kernel: str) -> torch.Tensor:
    """y = x @ W.T + b with W in FP8 and x quantized to FP8 on the fly (dynamic scales)."""
    shape = x.shape
    x2d = x.reshape(-1, shape[-1])
    xq, x_scale = quantize(x2d, rowwise=per_token)
    if kernel == SCALED_MM:
        y = torch._scaled_mm(
            xq, wq.t(),
            scale_a=x_scale if per_token else x_scale.reshape(()),
            scale_b=w_scale.t() if w_scale.dim() else w_scale,
            out_dtype=x.dtype if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float32,
        )
        if bias is not None:
            y = y + bias
    else:
        y = F.linear(dequantize(xq, x_scale, x.dtype), dequantize(wq, w_scale, x.dtype), bias)
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def weight_only_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 weights in memory, computed in the activation's dtype."""
    return F.linear(x, dequantize(wq, w_scale, x.dtype), bias)
