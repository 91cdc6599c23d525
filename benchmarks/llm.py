"""Gemma 3 270M under mixprec: per-group quality, KV bytes, whole-model switch, tokens/s, sweep time.

Every number is measured side by side in one run on this machine (CPU here: FP8 runs through
torch._scaled_mm's CPU path or emulation, so tokens/s compares maps, it is no FP8 speed-up claim).

* quality of all MLP / all attention / all KV caches / everything in FP8, and of the sweep's map:
  KL(base || policy), top-1 agreement and perplexity against the resident base (docstring windows)
* KV-cache bytes per token, FP8 (codes + per-token, per-head scales) against BF16, and as stored
* switching all 144 units (BF16 <-> FP8) against reloading the model and building its FP8 weights again
* prefill and decode tokens/s per map (one prompt, greedy)
* the exact staged sweep of every unit (layer granularity, KV caches included), its time, and the
  staged runner's estimated work against naive full passes

Usage: python benchmarks/llm.py [--windows 4] [--sweep-windows 4] [--switches 200] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from timing import median_ms  # noqa: E402

from worker.engine import HybridEngine  # noqa: E402
from worker.models import load_model  # noqa: E402
from worker.quality.docstrings import load_pairs  # noqa: E402
from worker.quality.language import language_evaluator  # noqa: E402
from worker.sweep import run_sweep  # noqa: E402

PROMPT = "Return a list of the lines in the string, breaking at line boundaries."


def groups(catalog: list[str]) -> dict[str, dict[str, str]]:
    def fp8(keep) -> dict[str, str]:
        return {layer: "fp8" for layer in catalog if keep(layer)}

    return {"all MLP": fp8(lambda x: ".mlp." in x), "all attention": fp8(lambda x: ".attention." in x),
            "all KV cache": fp8(lambda x: x.endswith("kv_cache")), "everything": fp8(lambda x: True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4, help="64-token docstring windows for quality")
    parser.add_argument("--sweep-windows", type=int, default=4, help="calibration windows of the sweep")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens per tokens/s run")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()

    log = sys.stderr
    started = time.perf_counter()
    model = load_model("gemma3-270m")
    load_s = time.perf_counter() - started
    engine = HybridEngine(model.module, model.layer_map)
    catalog, decoder = list(engine.catalog), model.decoder
    print(f"loaded gemma3-270m from the cache in {load_s:.1f}s: {len(catalog)} units, kernel {engine.kernel}",
          file=log)
    maps = groups(catalog)

    sweep_map = None
    if not args.skip_sweep:
        print(f"sweeping {len(catalog)} units on {args.sweep_windows} windows ...", file=log)
        result = run_sweep(model, engine, load_pairs(args.sweep_windows), metric=None, max_drop=0.02, algorithm="exact")
        sweep_map = {layer: p for layer, p in result.precision_map.items() if p != "bf16"}
        units = [model.staged.work(*model.staged.stage_of(u.layers[0])) for u in result.units]
        print(f"\nsweep: {len(result.units)} units, {len(sweep_map)} chosen, {len(result.combined)} combined "
              f"check(s), {result.seconds:.0f}s on {result.samples} windows of 64 tokens; staged work "
              f"{sum(units):.1f} full passes vs naive {len(units)} ({len(units) / sum(units):.2f}x less)")
        maps["sweep's map"] = sweep_map

    evaluator = language_evaluator(engine, model, args.windows, prompts=0)
    print(f"\nquality on {args.windows} windows of 64 tokens (base perplexity "
          f"{evaluator.evaluate({}).metrics['perplexity']:.2f})")
    print(f"{'map':<16}{'units':>6}{'KL':>10}{'top-1':>9}{'ppl delta':>11}")
    for name, precision_map in maps.items():
        deltas = evaluator.evaluate(precision_map).deltas
        print(f"{name:<16}{len(precision_map):>6}{deltas['kl_divergence']:>10.4f}"
              f"{1 + deltas['top1_agreement']:>9.3f}{deltas['perplexity']:>+11.3f}")

    fp8_bytes, bf16_bytes = decoder.kv_bytes_per_token("fp8"), decoder.kv_bytes_per_token("bf16")
    engine.apply(maps["all KV cache"])
    stored_fp8 = decoder.generate(decoder.encode(PROMPT), 8)
    engine.apply({})
    stored_base = decoder.generate(decoder.encode(PROMPT), 8)
    print(f"\nKV cache bytes per token (18 layers, 1 KV head of 256): fp8 {fp8_bytes} (codes + float32 scale per "
          f"token and head) vs bf16 {bf16_bytes}: {fp8_bytes / bf16_bytes:.3f}x; as stored here (base "
          f"{engine.base_dtype}): {stored_fp8.kv_bytes} vs {stored_base.kv_bytes} bytes for the same "
          f"{stored_fp8.prompt_tokens + 7} tokens")

    all_fp8 = maps["everything"]
    engine.apply(all_fp8)
    engine.apply({})
    state = {"fp8": False}

    def flip():
        state["fp8"] = not state["fp8"]
        engine.apply(all_fp8 if state["fp8"] else {})

    switch = median_ms(flip, args.switches)
    engine.apply({})

    def reload():
        fresh = load_model("gemma3-270m")
        HybridEngine(fresh.module, fresh.layer_map).prepare(["fp8"])

    reload_ms = median_ms(reload, 1)
    print(f"\nwhole-model switch of {len(catalog)} units: {switch:.3f} ms (median of {args.switches}); reload + "
          f"re-quantize: {reload_ms:.0f} ms; {reload_ms / switch:,.0f}x")

    print(f"\ntokens/s, one prompt of {len(decoder.encode(PROMPT))} tokens, {args.tokens} greedy tokens (CPU, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'map':<16}{'prefill':>10}{'decode':>10}")
    for name, precision_map in {"base": {}, **maps}.items():
        engine.apply(precision_map)
        decoder.generate(decoder.encode(PROMPT), 2)  # warm
        out = decoder.generate(decoder.encode(PROMPT), args.tokens)
        print(f"{name:<16}{out.prompt_tokens / out.prefill_seconds:>10.1f}"
              f"{(len(out.tokens) - 1) / out.decode_seconds:>10.1f}")
    engine.apply({})
    return 0


if __name__ == "__main__":
    sys.exit(main())
