"""Sensitivity sweep on MiniLM: the staged sweep (start each single-layer run at its stage of its block,
on cached base activations) against the naive one (a full forward pass per layer), side by side.

Both measure every layer alone in FP8 on the same calibration texts; units are timed interleaved
(staged, naive, staged, ...) so that machine noise hits both alike. Prints the time per layer of each,
the ratio, and the largest difference between their per-layer deltas (should be float noise).

Usage: python benchmarks/sweep.py [--samples 32] [--kernel auto|emulated]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from worker.engine import HybridEngine  # noqa: E402
from worker.models import load_model  # noqa: E402
from worker.quality.docstrings import load_pairs  # noqa: E402
from worker.sweep import Sweep, units_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--kernel", default="auto", choices=("auto", "scaled_mm", "emulated"))
    args = parser.parse_args()
    model = load_model("minilm")
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    pairs = load_pairs(args.samples)
    sweeps = {name: Sweep(model, engine, pairs, strategy=name) for name in ("staged", "naive")}
    seconds = {name: 0.0 for name in sweeps}
    deltas = {name: [] for name in sweeps}
    units = units_for(list(engine.catalog), "layer")
    for i, unit in enumerate(units):
        order = ("staged", "naive") if i % 2 == 0 else ("naive", "staged")
        for name in order:
            started = time.perf_counter()
            sweeps[name].measure([unit])
            seconds[name] += time.perf_counter() - started
            deltas[name].append(unit.delta)
        print(f"\r{i + 1}/{len(units)} layers", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    worst = max(abs(a - b) for a, b in zip(deltas["staged"], deltas["naive"], strict=True))
    print(f"MiniLM, {len(units)} layers, {len(pairs)} pairs ({2 * len(pairs)} texts), kernel {engine.kernel}, CPU")
    print(f"{'sweep':<32} {'total s':>8} {'s/layer':>8} {'speed':>7}")
    for name, label in (("naive", "naive (full pass per layer)"), ("staged", "staged (start at the layer)")):
        print(f"{label:<32} {seconds[name]:>8.1f} {seconds[name] / len(units):>8.3f} "
              f"{seconds['naive'] / seconds[name]:>6.2f}x")
    print(f"largest difference between their per-layer deltas: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
