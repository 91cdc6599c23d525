"""Sensitivity sweep on MiniLM: the fast sweep against the naive one (a full forward pass per layer).

The fast sweep starts each single-layer run at that layer's stage of its block, on base activations
cached by one reference pass, and runs packed (token-wise work on real tokens only, padding only
around attention). The middle row is staging alone, on padded batches, to show what each part gives.
All three measure every layer alone in FP8 on the same calibration texts, in the same batches; units
are timed interleaved, in rotating order, so that machine noise hits all alike. Prints the time per
layer of each, the speed against naive, and the largest difference between their per-layer deltas
(float noise: the fast paths sum in a different order). Then the combined check with fallback from
those deltas: a full forward pass per check, against each check starting at the unit the previous
one returned to base, on that check's activations.

Usage: python benchmarks/sweep.py [--samples 64] [--kernel auto|emulated]
"""

from __future__ import annotations

import argparse
import copy
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
    parser.add_argument("--samples", type=int, default=64, help="calibration pairs (mixprec sweep's default)")
    parser.add_argument("--kernel", default="auto", choices=("auto", "scaled_mm", "emulated"))
    parser.add_argument("--max-drop", type=float, default=0.001, help="budget of the combined checks (the CLI's default)")
    args = parser.parse_args()
    model = load_model("minilm")
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    pairs = load_pairs(args.samples)
    sweeps = {
        "naive": Sweep(model, engine, pairs, strategy="naive"),
        "padded": Sweep(model, engine, pairs, strategy="staged", pack=False),
        "staged": Sweep(model, engine, pairs, strategy="staged"),
    }
    seconds = {name: 0.0 for name in sweeps}
    deltas = {name: [] for name in sweeps}
    units = units_for(list(engine.catalog), "layer")
    names = list(sweeps)
    for i, unit in enumerate(units):
        for name in names[i % 3:] + names[:i % 3]:
            started = time.perf_counter()
            sweeps[name].measure([unit])
            seconds[name] += time.perf_counter() - started
            deltas[name].append(unit.delta)
        print(f"\r{i + 1}/{len(units)} layers", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    worst = max(abs(a - b) for name in ("padded", "staged")
                for a, b in zip(deltas[name], deltas["naive"], strict=True))
    print(f"MiniLM, {len(units)} layers, {len(pairs)} pairs ({2 * len(pairs)} texts), kernel {engine.kernel}, CPU")
    print(f"{'sweep':<40} {'total s':>8} {'s/layer':>8} {'speed':>7}")
    for name, label in (("naive", "naive (full forward pass per layer)"),
                        ("padded", "staged only (padded batches)"),
                        ("staged", "staged + packed (mixprec sweep)")):
        print(f"{label:<40} {seconds[name]:>8.1f} {seconds[name] / len(units):>8.3f} "
              f"{seconds['naive'] / seconds[name]:>6.2f}x")
    print(f"largest difference from the naive per-layer deltas: {worst:.2e}")
    print()
    combined_checks(sweeps, units, deltas["staged"], args.max_drop)
    return 0


def combined_checks(sweeps: dict[str, Sweep], units: list, deltas: list[float], max_drop: float) -> None:
    """The combined check with fallback from the same per-layer deltas: a full pass per check, against
    each check starting at the unit the previous one returned to base (as mixprec sweep runs it)."""
    for unit, delta in zip(units, deltas, strict=True):
        unit.delta, unit.drop = delta, -delta
    runs = {}
    for name in ("staged", "naive"):
        started = time.perf_counter()
        _, history = sweeps[name].choose(copy.deepcopy(units), max_drop)
        runs[name] = (time.perf_counter() - started, history)
    worst = max(abs(a["measured_drop"] - b["measured_drop"])
                for a, b in zip(runs["staged"][1], runs["naive"][1], strict=True))
    print(f"{f'combined checks, budget {max_drop:g}':<40} {'checks':>8} {'total s':>8} {'speed':>7}")
    for name, label in (("naive", "full forward pass per check"), ("staged", "from the reverted unit (mixprec)")):
        seconds, history = runs[name]
        print(f"{label:<40} {len(history):>8} {seconds:>8.1f} {runs['naive'][0] / seconds:>6.2f}x")
    print(f"largest difference between their measured drops: {worst:.2e}")


if __name__ == "__main__":
    sys.exit(main())
