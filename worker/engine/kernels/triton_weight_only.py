"""FP8-weight-only matmul (Triton): y = x @ (W_codes * scale).T + b, reading the e4m3 weight in the kernel.

The reference (worker.engine.kernels.reference.weight_only_linear) dequantizes the whole weight into
the activation's dtype on every call, which at a few tokens costs more than the matmul: here each
program reads its tile of codes once, widens it in registers and applies the per-channel scale to
the float32 accumulator. Numbers differ from the reference by rounding only (the scale is applied
after the sum, not to each weight), so tests compare within a tolerance.

Imported only where Triton runs: on CUDA, or on CPU under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _weight_only_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K,
                        stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                        HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        k = start + ks
        x = tl.load(x_ptr + rows[:, None] * stride_xm + k[None, :] * stride_xk,
                    mask=(rows[:, None] < M) & (k[None, :] < K), other=0.0)
        codes = tl.load(w_ptr + outs[None, :] * stride_wn + k[:, None] * stride_wk,
                        mask=(outs[None, :] < N) & (k[:, None] < K), other=0.0)
        weights = codes.to(tl.float32)
        if DOT_FP32:  # float32 activations; and Triton's CPU interpreter, whose 16-bit dot is wrong
            acc += tl.dot(x.to(tl.float32), weights, input_precision="ieee")
        else:
            acc += tl.dot(x, weights.to(x.dtype))
    acc = acc * tl.load(scale_ptr + outs, mask=outs < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outs, mask=outs < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + outs[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (outs[None, :] < N))


def weight_only_2d(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) in bf16/fp16/fp32, codes (N, K) e4m3, scale (N, 1) float32 -> (M, N) in x's dtype."""
    rows, depth = x.shape
    outs = codes.shape[0]
    y = torch.empty((rows, outs), dtype=x.dtype, device=x.device)
    block_m = 16 if rows <= 16 else 32  # tl.dot's smallest tile; decode batches are a few rows
    block_n, block_k = 64, 128
    grid = (triton.cdiv(rows, block_m), triton.cdiv(outs, block_n))
    scale = scale.reshape(-1)
    _weight_only_kernel[grid](
        x, codes, scale, bias if bias is not None else scale, y, rows, outs, depth,
        x.stride(0), x.stride(1), codes.stride(0), codes.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, DOT_FP32=x.dtype == torch.float32 or x.device.type == "cpu",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return y
