"""How tight the sweep's bound is against how many calibration windows it costs (issue 24).

Gemma 3 270M, one map (every MLP layer in FP8, a map a KL budget of 0.01-0.02 might keep), scored against
the resident base on N BOS-opened 64-token docstring windows. For the first n windows (n = 4, 8, 16, ...):
the mean KL rise, its 95% bootstrap bound (worker.quality.bound, as the sweep uses it), the bound's
margin over the mean, and the seconds the n windows cost (one base pass and one candidate pass each).

Usage: PYTHONPATH=. python benchmarks/bound_tightness.py [--windows 32]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from worker.engine import HybridEngine  # noqa: E402
from worker.models import load_model  # noqa: E402
from worker.quality.bound import upper_bound  # noqa: E402
from worker.quality.language import language_evaluator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--model", default="gemma3-270m")
    args = parser.parse_args()
    model = load_model(args.model)
    engine = HybridEngine(model.module, model.layer_map)
    evaluator = language_evaluator(engine, model, args.windows, prompts=0)
    started = time.perf_counter()
    evaluator.reference()
    result = evaluator.evaluate({layer: "fp8" for layer in engine.catalog if ".mlp." in layer})
    seconds = time.perf_counter() - started
    kl = result.items["kl_divergence"]
    print(f"{args.model}, every MLP layer at fp8, {args.windows} windows of 64 tokens: {seconds:.1f}s for base + "
          f"candidate passes ({seconds / args.windows:.2f}s a window)")
    print("windows  mean KL rise  95% bound  bound - mean  (bound - mean) / mean")
    n = 4
    while n <= args.windows:
        mean = sum(kl[:n]) / n
        bound = upper_bound("kl_divergence", kl[:n], [0.0] * n, 0.95)
        if bound is None:
            print(f"{n:7d}  {mean:12.5f}  {'-':>9}  (fewer than 8 windows: no bound)")
        else:
            print(f"{n:7d}  {mean:12.5f}  {bound:9.5f}  {bound - mean:12.5f}  {(bound - mean) / mean:8.0%}")
        n *= 2


if __name__ == "__main__":
    main()
