"""Decode attention over an FP8 KV cache (Triton): one query token per sequence, reading e4m3 codes
and per-token-and-head float32 scales inside the kernel, so a decode step never materialises the
context in BF16.

Flash-decoding: the context of each (sequence, KV head) is split into chunks, one program each, so
that a batch-1 step still fills the GPU; each program takes all the query heads of its KV head (GQA:
the K and V tiles are read once for the group), keeps an online softmax in float32 and writes its
partial maximum, sum and output; a second kernel combines the chunks. Per sequence, keys at
positions [lengths[b] - window, lengths[b]) are read (window 0: all of [0, lengths[b])); the model's
attention scaling and logit softcapping (Gemma 2) apply before the softmax.

Imported only where Triton runs: on CUDA, or on CPU under TRITON_INTERPRET=1 (the tests). The
interpreter's 16-bit dot is wrong, so products are float32 broadcasts and sums, not tl.dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_CHUNK = 256  # tokens a program covers at least: a long context gets one program per chunk
_MAX_SPLITS = 64


@triton.jit
def _partial_kernel(q_ptr, kc_ptr, ks_ptr, vc_ptr, vs_ptr, len_ptr, m_ptr, l_ptr, acc_ptr,
                    stride_qb, stride_qh, stride_kb, stride_kh, stride_kt, stride_sb, stride_sh, stride_st,
                    stride_vb, stride_vh, stride_vt, stride_wb, stride_wh, stride_wt,
                    head_dim, chunk, window, scaling, softcap, kv_heads,
                    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    SPLITS_P: tl.constexpr, SOFTCAP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    length = tl.load(len_ptr + b).to(tl.int32)
    lowest = tl.where(window > 0, tl.maximum(length - window, 0), 0)
    lo = lowest + split * chunk
    hi = tl.minimum(lo + chunk, length)
    g = tl.arange(0, GROUP_P)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < GROUP
    d_mask = d < head_dim
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    m = tl.full([GROUP_P], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_P], tl.float32)
    acc = tl.zeros([GROUP_P, BLOCK_D], tl.float32)
    k_base = kc_ptr + b * stride_kb + kv_head * stride_kh
    ks_base = ks_ptr + b * stride_sb + kv_head * stride_sh
    v_base = vc_ptr + b * stride_vb + kv_head * stride_vh
    vs_base = vs_ptr + b * stride_wb + kv_head * stride_wh
    for start in range(lo, hi, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        t_mask = t < hi
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + t[:, None] * stride_kt + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        k = k * tl.load(ks_base + t * stride_st, mask=t_mask, other=0.0)[:, None]
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scaling  # (GROUP_P, BLOCK_N)
        if SOFTCAP:  # softcap * tanh(s / softcap), tanh written with exp (saturates to +-1)
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        s = tl.where(t_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        total = total * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + t[:, None] * stride_vt + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        v = v * tl.load(vs_base + t * stride_wt, mask=t_mask, other=0.0)[:, None]
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    row = (b * kv_heads + kv_head) * SPLITS_P + split  # scratch: (batch, kv_heads, splits, GROUP_P[, BLOCK_D])
    tl.store(m_ptr + row * GROUP_P + g, m)
    tl.store(l_ptr + row * GROUP_P + g, total)
    tl.store(acc_ptr + (row * GROUP_P + g[:, None]) * BLOCK_D + d[None, :], acc)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, stride_ob, stride_oh, head_dim, splits, kv_heads,
                    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS_P: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    sp = tl.arange(0, SPLITS_P)
    d = tl.arange(0, BLOCK_D)
    s_mask = sp < splits
    rows = ((b * kv_heads + kv_head) * SPLITS_P + sp) * GROUP_P + g
    m = tl.load(m_ptr + rows, mask=s_mask, other=float("-inf"))
    m_max = tl.max(m, axis=0)
    weight = tl.where(s_mask & (m > float("-inf")), tl.exp(m - m_max), 0.0)
    total = tl.sum(tl.load(l_ptr + rows, mask=s_mask, other=0.0) * weight, axis=0)
    acc = tl.load(acc_ptr + rows[:, None] * BLOCK_D + d[None, :], mask=s_mask[:, None], other=0.0)
    out = tl.sum(acc * weight[:, None], axis=0) / total
    head = kv_head * GROUP + g
    tl.store(o_ptr + b * stride_ob + head * stride_oh + d, out.to(o_ptr.dtype.element_ty), mask=d < head_dim)


def decode_attention(query: torch.Tensor, key_codes: torch.Tensor, key_scales: torch.Tensor,
                     value_codes: torch.Tensor, value_scales: torch.Tensor, lengths: torch.Tensor,
                     scaling: float, softcap: float | None = None, window: int | None = None) -> torch.Tensor:
    """query (B, Hq, D); codes (B, Hkv, S, D) e4m3 and scales (B, Hkv, S, 1) float32, any strides with a
    unit stride along D; lengths (B,) tokens filled per sequence -> (B, Hq, D) in the query's dtype."""
    batch, heads, head_dim = query.shape
    kv_heads, slots = key_codes.shape[1], key_codes.shape[2]
    group = heads // kv_heads
    if group * kv_heads != heads or min(t.stride(-1) for t in (query, key_codes, value_codes)) != 1:
        raise ValueError(f"{heads} query heads over {kv_heads} KV heads, or a head_dim that is not contiguous")
    # Splits follow the buffers' size, not the lengths: the launch shape is fixed for a slot (a graph).
    splits = max(1, min(_MAX_SPLITS, triton.cdiv(slots, _CHUNK)))
    chunk = triton.cdiv(min(slots, window) if window else slots, splits)
    group_p, block_d = max(triton.next_power_of_2(group), 2), triton.next_power_of_2(head_dim)
    splits_p = max(triton.next_power_of_2(splits), 2)  # tl.arange's sizes: powers of two, two at least
    block_n = max(16, min(64, 8192 // (group_p * block_d)))  # a (group x tokens x head_dim) product in registers
    device = query.device
    m = torch.empty((batch, kv_heads, splits_p, group_p), dtype=torch.float32, device=device)
    total = torch.empty_like(m)
    acc = torch.empty((batch, kv_heads, splits_p, group_p, block_d), dtype=torch.float32, device=device)
    out = torch.empty((batch, heads, head_dim), dtype=query.dtype, device=device)
    lengths = lengths.to(device=device, dtype=torch.int32)
    _partial_kernel[(batch, kv_heads, splits)](
        query, key_codes, key_scales, value_codes, value_scales, lengths, m, total, acc,
        query.stride(0), query.stride(1), key_codes.stride(0), key_codes.stride(1), key_codes.stride(2),
        key_scales.stride(0), key_scales.stride(1), key_scales.stride(2),
        value_codes.stride(0), value_codes.stride(1), value_codes.stride(2),
        value_scales.stride(0), value_scales.stride(1), value_scales.stride(2),
        head_dim, chunk, window or 0, float(scaling), float(softcap or 1.0), kv_heads,
        GROUP=group, GROUP_P=group_p, BLOCK_D=block_d, BLOCK_N=block_n, SPLITS_P=splits_p,
        SOFTCAP=bool(softcap), num_warps=4)
    _combine_kernel[(batch, kv_heads, group)](
        m, total, acc, out, out.stride(0), out.stride(1), head_dim, splits, kv_heads,
        GROUP=group, GROUP_P=group_p, BLOCK_D=block_d, SPLITS_P=splits_p, num_warps=1)
    return out
