"""torch._scaled_mm, the FP8 GEMM: whether it runs here, which shapes it takes, and one call of it.

On CUDA (sm89+) it is cuBLASLt's FP8 GEMM. torch's CPU build runs it too, slowly: a reference path
that checks the numbers, never a speed path.
"""

from __future__ import annotations

import functools

import torch

from worker.engine.fp8 import FP8

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what _scaled_mm can write


def out_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _OUT_DTYPES else torch.float32


def _probe(device: str, dtype: torch.dtype, with_bias: bool) -> bool:
    dev = torch.device(device)
    out_dtype = out_dtype_for(dtype)
    a = torch.ones(16, 32, device=dev).to(FP8)
    b = torch.ones(16, 32, device=dev).to(FP8)
    bias = torch.ones(16, device=dev, dtype=out_dtype) if with_bias else None
    expected = torch.full((16, 16), 33.0 if with_bias else 32.0, device=dev)
    scales = [(torch.ones(16, 1, device=dev), torch.ones(1, 16, device=dev)),  # row-wise
              (torch.ones((), device=dev), torch.ones((), device=dev))]  # per tensor
    try:
        for scale_a, scale_b in scales:
            out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, bias=bias, out_dtype=out_dtype)
            if not torch.equal(out.float(), expected):
                return False
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    return True


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
    return _probe(device, dtype, with_bias=False)


@functools.lru_cache(maxsize=None)
def bias_in_gemm(device: str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the GEMM adds the bias itself (the epilogue does it for free) with both kinds of scale."""
    return scaled_mm_available(device, dtype) and _probe(device, dtype, with_bias=True)


def fits_scaled_mm(in_features: int, out_features: int, device: torch.device) -> bool:
    """CUDA's FP8 GEMMs need K and N divisible by 16 (torch checks it); the CPU path takes any shape."""
    return device.type == "cpu" or (in_features % 16 == 0 and out_features % 16 == 0)


def scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """xq (M, K) e4m3 with scales (M, 1) or (); wq (N, K) e4m3 with scales (N, 1) or (): y (M, N).

    W goes in column-major, as W.T of row-major W; row-wise scales are (M, 1) for x and (1, N) for W.
    """
    out_dtype = out_dtype_for(out_dtype)
    fold = bias is not None and bias_in_gemm(str(xq.device), out_dtype)
    y = torch._scaled_mm(
        xq, wq.t(),
        scale_a=x_scale if x_scale.dim() else x_scale.reshape(()),
        scale_b=w_scale.t() if w_scale.dim() else w_scale,
        bias=bias.to(out_dtype) if fold else None,
        out_dtype=out_dtype,
    )
    if bias is not None and not fold:
        y.add_(bias)  # in place: one kernel, no second output tensor
    return y
