"""Switching MiniLM's precision map in place against what a user does without mixprec: reload and re-quantize.

Prints the median time of a whole-model switch (all-BF16 <-> all-FP8) and of one layer group (the MLP
layers), beside reloading the model from disk and quantizing it again, and the resident weight bytes
of the quantizable layers with residency `both` and `fp8-only` when every layer runs FP8.

Usage: python benchmarks/toggle.py [--switches 400] [--reloads 3]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from timing import median_ms  # noqa: E402

from worker.engine import HybridEngine  # noqa: E402
from worker.models import load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=400)
    parser.add_argument("--reloads", type=int, default=3)
    args = parser.parse_args()

    print("loading MiniLM and building its FP8 copies once ...", file=sys.stderr)
    model = load_model("minilm")
    engine = HybridEngine(model.module, model.layer_map)
    all_fp8 = {layer: "fp8" for layer in engine.catalog}
    mlp_fp8 = {layer: "fp8" for layer in engine.catalog if ".mlp." in layer}
    engine.apply(all_fp8)
    engine.apply({})

    state = {"fp8": False, "mlp": False}

    def flip_whole():
        state["fp8"] = not state["fp8"]
        engine.apply(all_fp8 if state["fp8"] else {})

    def flip_mlp():
        state["mlp"] = not state["mlp"]
        engine.apply(mlp_fp8 if state["mlp"] else {})

    whole = median_ms(flip_whole, args.switches)
    engine.apply({})
    group = median_ms(flip_mlp, args.switches)
    engine.apply({})

    def reload_and_quantize():
        fresh = load_model("minilm")
        HybridEngine(fresh.module, fresh.layer_map).apply(all_fp8)

    print(f"reloading and re-quantizing {args.reloads} times ...", file=sys.stderr)
    reload = median_ms(reload_and_quantize, args.reloads)

    engine.apply(all_fp8)
    both = engine.resident_bytes()
    only_model = load_model("minilm")
    only = HybridEngine(only_model.module, only_model.layer_map, residency="fp8-only")
    only.apply(all_fp8)
    fp8_only = only.resident_bytes()
    only.apply({})
    only_state = {"fp8": False}

    def flip_fp8_only():  # moves every base copy off the device and back: a copy, not a pointer swap
        only_state["fp8"] = not only_state["fp8"]
        only.apply(all_fp8 if only_state["fp8"] else {})

    fp8_only_switch = median_ms(flip_fp8_only, max(args.switches // 10, 10))

    print(f"MiniLM on {engine.device}, base weights {engine.base_dtype}, FP8 kernel {engine.kernel}")
    print(f"{'operation':<44} {'median ms':>10} {'vs reload':>10}")
    print(f"{'switch whole model BF16 <-> FP8 (36 layers)':<44} {whole:>10.3f} {reload / whole:>9.0f}x")
    print(f"{'switch MLP group BF16 <-> FP8 (12 layers)':<44} {group:>10.3f} {reload / group:>9.0f}x")
    print(f"{'switch whole model, residency fp8-only':<44} {fp8_only_switch:>10.3f} {reload / fp8_only_switch:>9.0f}x")
    print(f"{'reload from disk + re-quantize (no mixprec)':<44} {reload:>10.1f} {1:>9.0f}x")
    print()
    print(f"{'residency (all layers FP8)':<28} {'device base':>12} {'device fp8':>12} {'host base':>12} {'device total':>13}")
    for name, counts in (("both", both), ("fp8-only", fp8_only)):
        device = counts.get("base", 0) + counts.get("fp8", 0)
        print(f"{name:<28} {counts.get('base', 0) / 2**20:>10.1f}Mi {counts.get('fp8', 0) / 2**20:>10.1f}Mi "
              f"{counts.get('host', 0) / 2**20:>10.1f}Mi {device / 2**20:>11.1f}Mi")
    print(f"\n(base weights are {engine.base_dtype} here: CPU tests load float32; on a GPU they would be bf16, "
          "half these base bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
