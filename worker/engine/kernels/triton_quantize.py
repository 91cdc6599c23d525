"""Fused FP8 activation quantize (Triton): read the activation once, write e4m3 codes and scales.

The eager quantize (worker.engine.fp8.quantize) runs about eight kernels through a float32 temporary;
here one program per row reads the row, takes its amax, and writes codes plus the row's scale.
Per-tensor scales take one pass for the rows' amax and one to write the codes.

Codes and scales are bit-identical to the reference: the division is IEEE round-to-nearest
(`div_rn`, not the approximate default), and each value is rounded onto the e4m3 grid in float32
(round half to even, as torch's conversion does) before the cast, so the cast itself never rounds.
That also keeps Triton's CPU interpreter exact, whose own float8 conversion rounds differently.

Imported only where Triton runs: on CUDA, or on CPU under TRITON_INTERPRET=1 (the tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.engine.fp8 import _TINY, E4M3_MAX, FP8

_MAX_BLOCK = 4096  # widest row chunk one program holds at once; wider rows take two passes


@triton.jit
def _round_to_e4m3(y):
    """y in [-448, 448] (float32) -> the nearest e4m3 value, ties to even, still as float32."""
    bits = y.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    sign = bits ^ magnitude  # the sign bit alone, kept so that -0.0 stays -0.0
    # Normal e4m3 values keep 3 of float32's 23 mantissa bits: round the other 20 away, ties to even.
    lowest_kept = (magnitude >> 20) & 1
    normal = (magnitude + 0x7FFFF + lowest_kept) & -1048576  # ~0xFFFFF
    # Below 2**-6 e4m3 is subnormal, multiples of 2**-9: adding 2**14 leaves float32 exactly that step.
    absolute = magnitude.to(tl.float32, bitcast=True)
    subnormal = ((absolute + 16384.0) - 16384.0).to(tl.int32, bitcast=True)
    rounded = tl.where(absolute < 0.015625, subnormal, normal)
    return (rounded | sign).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_row_kernel(x_ptr, q_ptr, scale_ptr, tensor_scale_ptr, n_cols, stride_row, stride_col,
                         PER_TOKEN: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_row
    q_row = q_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        mask = cols < n_cols
        x = tl.load(x_row + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
        if PER_TOKEN:
            scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=0), 448.0), 1e-12)
            tl.store(scale_ptr + row, scale)
        else:
            scale = tl.load(tensor_scale_ptr)
        y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
        tl.store(q_row + cols, _round_to_e4m3(y).to(tl.float8e4nv), mask=mask)
    else:
        if PER_TOKEN:
            amax = tl.zeros([BLOCK], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK):
                mask = start + cols < n_cols
                x = tl.load(x_row + (start + cols) * stride_col, mask=mask, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = tl.maximum(tl.math.div_rn(tl.max(amax, axis=0), 448.0), 1e-12)
            tl.store(scale_ptr + row, scale)
        else:
            scale = tl.load(tensor_scale_ptr)
        for start in range(0, n_cols, BLOCK):
            mask = start + cols < n_cols
            x = tl.load(x_row + (start + cols) * stride_col, mask=mask, other=0.0).to(tl.float32)
            y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0)
            tl.store(q_row + start + cols, _round_to_e4m3(y).to(tl.float8e4nv), mask=mask)


@triton.jit
def _row_amax_kernel(x_ptr, amax_ptr, n_cols, stride_row, stride_col, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * stride_row + (start + cols) * stride_col, mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    tl.store(amax_ptr + row, tl.max(amax, axis=0))


def _launch_shape(n_cols: int) -> tuple[int, bool, int]:
    block = min(triton.next_power_of_2(max(n_cols, 16)), _MAX_BLOCK)
    warps = 8 if block >= 2048 else 4
    return block, n_cols <= block, warps


def quantize_2d(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), any strides -> (codes (M, K) contiguous e4m3, scales (M, 1) or () float32), as
    worker.engine.fp8.quantize(x, rowwise=per_token) computes them."""
    rows, cols = x.shape
    codes = torch.empty((rows, cols), dtype=FP8, device=x.device)
    block, one_pass, warps = _launch_shape(cols)
    if per_token:
        scales = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
        tensor_scale = scales  # unused by the kernel
    else:
        amax = torch.empty((rows,), dtype=torch.float32, device=x.device)
        if rows:
            _row_amax_kernel[(rows,)](x, amax, cols, x.stride(0), x.stride(1), BLOCK=block, num_warps=warps)
        # The same two steps as the reference, so the scale is bit-identical to it.
        tensor_scale = (amax.amax() / E4M3_MAX).clamp(min=_TINY) if rows else torch.full((), _TINY, device=x.device)
        scales = tensor_scale
    if rows:
        _quantize_row_kernel[(rows,)](x, codes, scales, tensor_scale, cols, x.stride(0), x.stride(1),
                                      PER_TOKEN=per_token, BLOCK=block, ONE_PASS=one_pass, num_warps=warps)
    return codes, scales
