"""Which kernel computes an FP8 layer, chosen per device and shape.

* The GEMM: torch._scaled_mm where it runs (`scaled_mm`), else both operands dequantized (`emulated`).
* The activation quantize: the fused Triton kernel where Triton runs, else the eager reference.
* fp8-weight-only: up to WEIGHT_ONLY_KERNEL_MAX_TOKENS tokens the Triton kernel that reads FP8 weights;
  above, and where Triton does not run, the weight dequantized for a matmul (amortised over many rows).
* Decode attention over an FP8 KV cache: the Triton kernel that reads codes and scales; where Triton
  does not run, the cache dequantizes its filled part and the model's own attention reads that
  (worker.engine.kv_cache), so this entry point serves the kernel's callers and tests alike.

Triton runs on CUDA. On CPU it runs only when asked for (MIXPREC_TRITON_ON_CPU=1, with Triton's
interpreter chosen by TRITON_INTERPRET=1 before start): slow, and how CI tests the kernels without a
GPU. Triton is imported only then, so a CPU worker never needs it.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch

from mixprec.errors import FailedPrecondition, FieldError, InvalidArgument
from worker.engine.kernels import reference
from worker.engine.kernels.scaled_mm import fits_scaled_mm, out_dtype_for, scaled_mm, scaled_mm_available

SCALED_MM = "scaled_mm"
EMULATED = "emulated"
KERNELS = ("auto", SCALED_MM, EMULATED)
# Where reading FP8 weights inside a kernel beats dequantizing the whole weight once per call: a few
# rows (decode steps, small batches). benchmarks/gpu.py times both sides of it per shape.
WEIGHT_ONLY_KERNEL_MAX_TOKENS = 64
TRITON_ON_CPU_ENV = "MIXPREC_TRITON_ON_CPU"


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


def triton_runs(device: torch.device) -> bool:
    """Whether the Triton kernels serve tensors on `device`: CUDA, or CPU when asked for (interpreted)."""
    if device.type == "cuda":
        return _triton_installed()
    return (device.type == "cpu" and os.environ.get(TRITON_ON_CPU_ENV) == "1"
            and os.environ.get("TRITON_INTERPRET") == "1" and _triton_installed())


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def _triton(module: str):
    return importlib.import_module(f"worker.engine.kernels.{module}")


def quantize_activation(x2d: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> e4m3 codes and dynamic scales ((M, 1) per token, () per tensor)."""
    if triton_runs(x2d.device):
        return _triton("triton_quantize").quantize_2d(x2d, per_token)
    return reference.quantize_2d(x2d, per_token)


def fp8_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               per_token: bool, kernel: str,
               quantized: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """y = x @ W.T + b with W in FP8 and x quantized to FP8 on the fly (dynamic scales).

    `quantized`: x's codes and scales when another layer already quantized this same input.
    """
    shape = x.shape
    xq, x_scale = quantized if quantized is not None else quantize_activation(x.reshape(-1, shape[-1]), per_token)
    if kernel == SCALED_MM:
        y = scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype_for(x.dtype))
    else:
        y = reference.emulated_linear(xq, x_scale, wq, w_scale, bias, x.dtype)
    return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


def weight_only_linear(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 weights in memory, computed in the activation's dtype."""
    shape = x.shape
    tokens = x.numel() // shape[-1] if shape[-1] else 0
    if 0 < tokens <= WEIGHT_ONLY_KERNEL_MAX_TOKENS and triton_runs(x.device):
        y = _triton("triton_weight_only").weight_only_2d(x.reshape(-1, shape[-1]), wq, w_scale, bias)
        return y.reshape(*shape[:-1], y.shape[-1])
    return reference.weight_only_linear(x, wq, w_scale, bias)


def weight_only_kernel_name(device: torch.device) -> str:
    return "w8-triton" if triton_runs(device) else "dequantize"


def fp8_decode_attention(query: torch.Tensor, key_codes: torch.Tensor, key_scales: torch.Tensor,
                         value_codes: torch.Tensor, value_scales: torch.Tensor, lengths: torch.Tensor,
                         scaling: float, softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    """(B, Hq, D) attention of one query token per sequence over FP8 K/V codes (B, Hkv, S, D) and
    scales (B, Hkv, S, 1), keys [lengths - window, lengths) of each sequence."""
    args = (query, key_codes, key_scales, value_codes, value_scales, lengths, scaling, softcap, window)
    if triton_runs(query.device):
        return _triton("triton_decode_attention").decode_attention(*args)
    return reference.decode_attention(*args)
