"""Timing shared by the benchmarks (each runs as a script, so this directory is on its import path)."""

from __future__ import annotations

import statistics
import time


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn`, in milliseconds."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def device_ms(fn, device, repeats: int) -> float:
    """Median time of `repeats` calls of `fn` after one warm-up call, in milliseconds: CUDA events on a
    GPU (the device's own clock, not the host's), the wall clock elsewhere."""
    import torch

    fn()
    if device.type != "cuda":
        return median_ms(fn, repeats)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)
