"""The model's attention, reading an FP8 KV cache's codes on decode steps.

Registered with transformers' AttentionInterface under a name of its own, with the mask function of the
implementation it wraps, and set as the model's attention implementation: every attention module of
the model then calls `attend` right after its cache update, with the scaling, window and softcap the
module asks for. `attend` hands everything to the wrapped implementation (SDPA), unchanged, unless the
cache gave it packed FP8 buffers (uint8: worker.engine.kv_cache), which only a decode step on a device
where the decode-attention kernel runs does. Routing through the interface rather than patching
attention modules keeps the models' own code (projections, RoPE, norms) as it is.

A slot's buffers hold only its visible tokens in order (full layers) or its window as a ring
(sliding layers), so every key is attended: the kernel takes the filled length as each sequence's
length. Several slots batched in one step would pass per-slot lengths (`kv_lengths`) the same way.
"""

from __future__ import annotations

import functools

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from worker.engine.kernels import fp8_decode_attention
from worker.engine.kv_cache import PACKED, unpack

WRAPPED = ("sdpa",)  # implementations with a shared function to hand back to (eager ones are per model)
PREFIX = "mixprec-kv-"


def install(module: torch.nn.Module) -> bool:
    """Routes `module`'s attention through `attend`; False (nothing changed) where its implementation is
    not one `attend` can wrap."""
    config = module.config
    current = config._attn_implementation
    if current.startswith(PREFIX):
        return True
    if current not in WRAPPED:
        return False
    name = PREFIX + current
    AttentionInterface.register(name, functools.partial(attend, ALL_ATTENTION_FUNCTIONS[current]))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    for sub in module.modules():  # the text config of a composite model is a config of its own
        sub_config = getattr(sub, "config", None)
        if sub_config is not None and sub_config._attn_implementation == current:
            sub_config._attn_implementation = name
    return True


def attend(wrapped, module, query, key, value, attention_mask, **kwargs):
    if key.dtype != PACKED:
        return wrapped(module, query, key, value, attention_mask, **kwargs)
    batch, _, tokens, head_dim = query.shape
    if tokens != 1:
        raise RuntimeError("packed FP8 K/V reach attention only on one-token decode steps")
    key_codes, key_scales = unpack(key)
    value_codes, value_scales = unpack(value)
    lengths = kwargs.get("kv_lengths")
    if lengths is None:
        lengths = torch.full((batch,), key.shape[2], dtype=torch.int32, device=query.device)
    scaling = kwargs.get("scaling") or head_dim ** -0.5
    out = fp8_decode_attention(query[:, :, 0], key_codes, key_scales, value_codes, value_scales, lengths,
                               scaling, kwargs.get("softcap"))
    return out.unsqueeze(1), None  # (batch, 1, heads, head_dim), as SDPA's wrapper returns it
