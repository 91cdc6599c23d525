"""FP8 (e4m3) quantization: scales from the data, per output channel, per token, or per tensor."""

from __future__ import annotations

import torch

from mixprec.errors import FailedPrecondition

FP8 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(FP8).max)  # 448
_TINY = 1e-12  # keeps an all-zero row or tensor from dividing by zero


def quantize(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x ≈ q * scale, with one scale per row (shape (rows, 1)) or one for the whole tensor (shape ())."""
    x32 = x.float()
    amax = x32.abs().amax(dim=-1, keepdim=True) if rowwise else x32.abs().amax()
    scale = (amax / E4M3_MAX).clamp(min=_TINY)
    q = (x32 / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
    return q, scale.to(torch.float32)


# Every e4m3 code's value, by its bits: on CPU reading codes back through this table is about twice as
# fast as the dtype conversion, and gives the same numbers.
_E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(FP8).float()


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    values = torch.take(_E4M3_VALUES, q.view(torch.uint8).long()) if q.device.type == "cpu" else q.float()
    return (values * scale).to(dtype)


def check_finite(weight: torch.Tensor, layer: str) -> None:
    """A NaN or Inf weight would poison its whole row's (or tensor's) scale: refuse, naming the layer."""
    finite = torch.isfinite(weight)
    if not finite.all():
        bad = int((~finite).sum())
        raise FailedPrecondition(f"layer {layer!r} has {bad} NaN/Inf weight(s); it cannot be quantized to FP8")
