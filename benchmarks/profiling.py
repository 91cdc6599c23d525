"""Which device kernels a call really ran, and which of them the FP8 GEMM call launched."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

FP8_GEMM_OP = "aten::_scaled_mm"


@dataclass
class Profiled:
    launches: Counter = field(default_factory=Counter)  # every device kernel, by name
    fp8_gemm: set[str] = field(default_factory=set)  # those launched inside torch._scaled_mm


def _launched(event) -> list[str]:
    names = [kernel.name for kernel in event.kernels]
    for child in event.cpu_children:
        names.extend(_launched(child))
    return names


def profile_kernels(fn, device) -> Profiled:
    """Runs fn() once under the profiler. An FP8 GEMM kernel is recognised by the op that launched it,
    not by its name: cuBLASLt's on Hopper is `nvjet_sm90_qqtst_...`, with no "fp8" in it. On a CPU
    there are no device kernels: the result is empty."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        fn()
        return Profiled()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    found = Profiled()
    for event in prof.events():
        if event.device_type.name == "CUDA":
            found.launches[event.name] += 1
        elif event.name == FP8_GEMM_OP:
            found.fp8_gemm.update(_launched(event))
    return found
