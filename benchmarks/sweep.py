"""Sensitivity sweep: naive, exact staged and fast, side by side in one run, on the same calibration pairs.

* naive: every unit measured alone with a full forward pass, every combined check a full pass (the
  textbook algorithm);
* exact staged (`mixprec sweep --exact`): the same walk, each run starting at the first layer it changes
  on cached base activations;
* fast (`mixprec sweep`, the default): every unit's drop estimated from one forward and backward pass,
  exact runs only where a decision depends on them.

Each row is a whole sweep, reference pass included. Prints the time of each, its speed against naive,
how many single-unit runs and combined checks it made, whether its map is the exact sweep's (and which
units differ if not), and the rank correlation between the fast sweep's estimates and the exact per-unit
drops. Ends with one line per model and size: `sweep speed: X.Xx naive, same map: yes|no`.

Usage: python benchmarks/sweep.py [--model minilm] [--samples 64 [200 ...]] [--max-drop 0.001]
       [--granularity layer] [--precision fp8] [--kernel auto|emulated] [--skip-naive]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mixprec.cli.sweep_cmds import DEFAULT_BUDGET  # noqa: E402
from worker.engine import HybridEngine  # noqa: E402
from worker.models import load_model  # noqa: E402
from worker.quality.docstrings import load_pairs  # noqa: E402
from worker.sweep import run_sweep  # noqa: E402
from worker.sweep_estimate import rank_correlation  # noqa: E402

ROWS = (("fast", "fast (mixprec sweep)", {"algorithm": "fast"}),
        ("exact", "exact staged (mixprec sweep --exact)", {"algorithm": "exact"}),
        ("naive", "naive (a full pass per run and check)", {"algorithm": "exact", "strategy": "naive"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="minilm (default), gemma3-270m, tiny-llama")
    parser.add_argument("--samples", type=int, nargs="+", default=[64], help="calibration pairs; several sizes run one after another")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="budget on the metric's worse side (default: the CLI's for the metric)")
    parser.add_argument("--metric", default=None, help="default: cosine_to_base for embedders, kl_divergence for decoders")
    parser.add_argument("--granularity", default="layer", choices=("layer", "group"))
    parser.add_argument("--precision", default="fp8", help="a ladder, e.g. fp8,fp8-weight-only")
    parser.add_argument("--kernel", default="auto", choices=("auto", "scaled_mm", "emulated"))
    parser.add_argument("--skip-naive", action="store_true", help="only fast and exact staged (speed against exact)")
    args = parser.parse_args()
    model = load_model(args.model)
    args.metric = args.metric or ("kl_divergence" if model.decoder is not None else "cosine_to_base")
    if args.max_drop is None:
        args.max_drop = DEFAULT_BUDGET.get(args.metric, 0.001)
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    verdicts = []
    for samples in args.samples:
        verdicts.append(compare(model, engine, args, load_pairs(samples)))
        print()
    for line in verdicts:
        print(line)
    return 0


def compare(model, engine, args, pairs) -> str:
    results, seconds = {}, {}
    rows = [row for row in ROWS if not (args.skip_naive and row[0] == "naive")]
    for name, _, options in rows:
        print(f"{name} sweep of {len(pairs)} pairs ...", file=sys.stderr, flush=True)
        engine.apply({})
        started = time.perf_counter()
        results[name] = run_sweep(model, engine, pairs, metric=args.metric, precision=args.precision,
                                  granularity=args.granularity, max_drop=args.max_drop, **options)
        seconds[name] = time.perf_counter() - started
        print(f"  {name}: {seconds[name]:.1f}s, {len(results[name].combined)} combined checks", file=sys.stderr,
              flush=True)
    exact, fast = results["exact"], results["fast"]
    baseline = "naive" if "naive" in results else "exact"
    size = (f"{exact.samples} windows" if model.decoder is not None
            else f"{len(pairs)} pairs ({2 * len(pairs)} texts)")
    print(f"{model.name}, {len(exact.units)} {args.granularity}s, {size}, "
          f"{args.metric} budget {args.max_drop:g}, precision {args.precision}, kernel {engine.kernel}, CPU")
    print(f"{'sweep':<40} {'total s':>8} {'speed':>7} {'runs':>5} {'checks':>7} {'chosen':>7}  same map")
    for name, label, _ in rows:
        result = results[name]
        runs = (len(result.fast["measured"]) if result.algorithm == "fast"
                else sum(t.measured is not None for u in result.units for t in u.trials))
        chosen = sum(p != "bf16" for p in result.precision_map.values())
        same = "yes" if result.precision_map == exact.precision_map else "no"
        print(f"{label:<40} {seconds[name]:>8.1f} {seconds[baseline] / seconds[name]:>6.1f}x {runs:>5} "
              f"{len(result.combined):>7} {chosen:>7}  {same}")
    # Units without an estimate (none where the estimate covers every unit) are left out of the ranks.
    pairs_ = [(f.trials[0].estimate, e.trials[0].measured) for f, e in zip(fast.units, exact.units, strict=True)
              if f.trials[0].estimate is not None and math.isfinite(f.trials[0].estimate)
              and math.isfinite(e.trials[0].measured)]
    estimates, drops = [a for a, _ in pairs_], [b for _, b in pairs_]
    print(f"rank correlation of the fast sweep's estimates and the exact per-unit drops: "
          f"{rank_correlation(estimates, drops):.3f} (Spearman, {len(drops)} of {len(exact.units)} units); "
          f"estimate pass {fast.fast['estimate_seconds']:.1f}s, margin +/-{100 * fast.fast['margin']:.0f}%")
    print(f"measured drop of the chosen map: fast {fast.calibration_drop:.6f}, exact {exact.calibration_drop:.6f}")
    differ = [(f, e) for f, e in zip(fast.units, exact.units, strict=True) if f.precision != e.precision]
    for f, e in differ:
        print(f"  differs: {f.name}: fast {f.precision} (estimated {f.trials[0].estimate:.6f}), exact {e.precision} "
              f"(measured {e.trials[0].measured:.6f})")
    same = "yes" if not differ and fast.precision_map == exact.precision_map else "no"
    return f"{model.name} at {size}: sweep speed: {seconds[baseline] / seconds['fast']:.1f}x {baseline}, same map: {same}"


if __name__ == "__main__":
    sys.exit(main())
