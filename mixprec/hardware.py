"""A worker's hardware report in one line, as `mixprec fleet` and the dashboard show it."""

from __future__ import annotations


def hardware_text(device: str, dtype: str, kernel: str, fp8_kernel: bool) -> str:
    """e.g. "cuda:0 NVIDIA H200 · bfloat16 · scaled_mm: FP8 GEMM" or "cpu · float32 · scaled_mm (cpu
    reference): no FP8 GEMM"; "-" for a worker that reported nothing."""
    if not (device or dtype or kernel):
        return "-"
    gemm = "FP8 GEMM" if fp8_kernel else "no FP8 GEMM"
    return " · ".join(part for part in (device, dtype, f"{kernel or '-'}: {gemm}") if part)
