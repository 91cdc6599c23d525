"""FP8 (torch._scaled_mm, row-wise scales) against BF16 matmul: MiniLM's linear shapes and large squares.

On a GPU with FP8 tensor cores (sm89+) it prints the speed ratio and the kernels the profiler saw
torch._scaled_mm launch (found by the op, not by a kernel's name: cuBLASLt's are named `nvjet_...`). On
a CPU it checks correctness only: the timings it prints there are not an FP8 speed-up claim, since
CPUs have no FP8 units and torch's CPU _scaled_mm is a slow reference path.

Usage: python benchmarks/fp8_gemm.py [--large 8192]
"""

from __future__ import annotations

import argparse
import sys

import torch
from profiling import profile_kernels
from timing import device_ms

from worker.engine import kernels
from worker.engine.fp8 import dequantize, quantize

MINILM_SHAPES = [  # (tokens, in, out): a batch of 32 sentences of 32 tokens
    (1024, 384, 384), (1024, 384, 1536), (1024, 1536, 384),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=None, help="size of the square case (default 8192 GPU, 1024 CPU)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    large = args.large or (8192 if on_gpu else 1024)
    repeats = args.repeats or (50 if on_gpu else 5)
    kernel = kernels.resolve_kernel("auto", device, torch.bfloat16)
    if kernel != kernels.SCALED_MM:
        print(f"no FP8 kernel on {device}: only the emulated path exists here; nothing to measure", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    if not on_gpu:
        print("CPU run: correctness check only. CPU timings below are NOT an FP8 speed-up claim.")
    # rel. error: FP8 GEMM against the exact fp32 product (what quantization costs);
    # vs emulated: against the same FP8 operands dequantized and multiplied in fp32 (what the kernel adds).
    print(f"{'M x K x N':<22} {'bf16 ms':>9} {'fp8 ms':>9} {'fp8 speed':>10} {'rel. error':>11} {'vs emulated':>12}")
    torch.manual_seed(0)
    for m, k, n in [*MINILM_SHAPES, (large, large, large)]:
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
        wq, ws = quantize(w, rowwise=True)
        xq, xs = quantize(x, rowwise=True)

        def bf16(x=x, w=w):
            return x @ w.T

        def fp8(xq=xq, wq=wq, xs=xs, ws=ws):  # the GEMM alone, on operands quantized once (as weights are)
            return torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16)

        exact = x.float() @ w.float().T
        emulated = dequantize(xq, xs) @ dequantize(wq, ws).T
        error = ((fp8().float() - exact).norm() / exact.norm()).item()
        kernel_error = ((fp8().float() - emulated).norm() / emulated.norm()).item()
        t_bf16, t_fp8 = device_ms(bf16, device, repeats), device_ms(fp8, device, repeats)
        speed = f"{t_bf16 / t_fp8:.2f}x" if on_gpu else "n/a (CPU)"
        print(f"{f'{m}x{k}x{n}':<22} {t_bf16:>9.3f} {t_fp8:>9.3f} {speed:>10} {error:>11.4f} {kernel_error:>12.5f}")
        if error > 0.06 or kernel_error > 0.01:  # e4m3 costs ~4 %; the bf16 output rounding ~0.3 %
            print(f"error: FP8 result is off by {error:.3f} relative to fp32 and by {kernel_error:.4f} relative "
                  "to the emulated product", file=sys.stderr)
            return 1
    if on_gpu:
        names = sorted(profile_kernels(fp8, device).fp8_gemm)
        print("kernels torch._scaled_mm launched: " + (", ".join(names) if names else "NONE (no device kernel ran)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
