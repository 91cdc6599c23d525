"""FP8 matrix products: the real kernel (torch._scaled_mm) where the device has one, else emulation."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mixprec.errors import FailedPrecondition, FieldError, InvalidArgument
from worker.engine.fp8 import FP8, dequantize, quantize

SCALED_MM = "scaled_mm"
EMULATED = "emulated"
KERNELS = ("auto", SCALED_MM, EMULATED)
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what _scaled_mm can write


def out_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _OUT_DTYPES else torch.float32


@functools.lru_cache(maxsize=None)
def scaled_mm_available(device: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether torch._scaled_mm runs FP8 here with row-wise and per-tensor scales, writing `dtype`.

    Probed rather than assumed: CUDA needs sm89+, and some CUDA builds write row-wise results in
    bf16 only; torch's CPU build runs every combination (slowly).
    """
    if not hasattr(torch, "_scaled_mm"):
        return False
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (8, 9):
        return False
    a = torch.ones(16, 32, device=dev).to(FP8)
    b = torch.ones(16, 32, device=dev).to(FP8)
    scales = [(torch.ones(16, 1, device=dev), torch.ones(1, 16, device=dev)),  # row-wise
              (torch.ones((), device=dev), torch.ones((), device=dev))]  # per tensor
    try:
        for scale_a, scale_b in scales:
            out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype_for(dtype))
            if not torch.equal(out.float(), torch.full((16, 16), 32.0, device=dev)):
                return False
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def fits_scaled_mm(in_features: int, out_features: int, device: torch.device) -> bool:
    """CUDA's FP8 GEMMs need K and N divisible by 16 (torch checks it); the CPU path takes any shape."""
    return device.type == "cpu" or (in_features % 16 == 0 and out_features % 16 == 0)


def resolve_kernel(requested: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The engine-wide kernel: `auto` picks scaled_mm where it runs, emulation elsewhere."""
    if requested not in KERNELS:
        raise InvalidArgument(FieldError("kernel", f"{requested!r} is not one of {', '.join(KERNELS)}"))
    if requested == EMULATED:
        return EMULATED
    available = scaled_mm_available(str(device), dtype)
    if requested == SCALED_MM and not available:
        raise FailedPrecondition(f"kernel 'scaled_mm' was requested but torch._scaled_mm cannot run FP8 on "
                                 f"{device} with {dtype} outputs; use 'auto' or 'emulated'")
    return SCALED_MM if available else EMULATED


def layer_kernel(kernel: str, in_features: int, out_features: int, device: torch.device) -> str:
    """One layer's kernel: the engine's, unless the layer's shape is one the FP8 GEMM cannot take."""
    if kernel == SCALED_MM and not fits_scaled_mm(in_features, out_features, device):
        return EMULATED
    return kernel


def fp8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               per_token: bool, kernel: str) -> torch.Tensor:
    """y = x @ W.T + b with W in FP8 and x quantized to FP8 on the fly (dynamic scales)."""
    shape = x.shape
    x2d = x.reshape(-1, shape[-1])
    xq, x_scale = quantize(x2d, rowwise=per_token)
    if kernel == SCALED_MM:
        # Row-wise scales are (M, 1) for x and (1, N) for W; W goes in column-major, as W.T of row-major W.
        y = torch._scaled_mm(
            xq, wq.t(),
            scale_a=x_scale if per_token else x_scale.reshape(()),
            scale_b=w_scale.t() if w_scale.dim() else w_scale,
            out_dtype=out_dtype_for(x.dtype),
        )
        if bias is not None:
            y = y + bias
    else:
        y = F.linear(dequantize(xq, x_scale, x.dtype), dequantize(wq, w_scale, x.dtype), bias)
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def weight_only_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 weights in memory, computed in the activation's dtype."""
    return F.linear(x, dequantize(wq, w_scale, x.dtype), bias)
