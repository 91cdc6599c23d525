"""FP8 kernels: the dispatch (worker.engine.kernels.dispatch) picks one per device and shape; one
module per kernel (scaled_mm, triton_quantize, triton_weight_only,
triton_decode_attention) and the eager reference path."""

from worker.engine.kernels.dispatch import (
    EMULATED,
    KERNELS,
    SCALED_MM,
    TRITON_ON_CPU_ENV,
    WEIGHT_ONLY_KERNEL_MAX_TOKENS,
    fp8_decode_attention,
    fp8_linear,
    layer_kernel,
    quantize_activation,
    resolve_kernel,
    triton_runs,
    weight_only_kernel_name,
    weight_only_linear,
)
from worker.engine.kernels.scaled_mm import bias_in_gemm, fits_scaled_mm, out_dtype_for, scaled_mm_available

__all__ = [
    "EMULATED", "KERNELS", "SCALED_MM", "TRITON_ON_CPU_ENV", "WEIGHT_ONLY_KERNEL_MAX_TOKENS", "bias_in_gemm", "fits_scaled_mm",
    "fp8_decode_attention", "fp8_linear", "layer_kernel", "out_dtype_for", "quantize_activation", "resolve_kernel", "scaled_mm_available",
    "triton_runs", "weight_only_kernel_name", "weight_only_linear",
]
