"""`mixprec catalog` and `mixprec eval`: a model's layer names, and what a policy costs in quality."""

from __future__ import annotations

import sys

from mixprec.cli import output
from mixprec.cli.common import add_kernel_option, command
from mixprec.errors import FieldError, InvalidArgument
from mixprec.policy import PolicySpec, Rule, load_policy_file, resolve_or_raise


def register(sub) -> None:
    c = command(sub, "catalog", "print a model's canonical layer names (the file `endpoint create --layers` takes)",
                _catalog)
    c.add_argument("--model", required=True,
                   help="minilm, gemma3-270m, tiny-llama, hf:PATH (a local causal LM), or package.module:factory")

    e = command(sub, "eval", "measure a policy's quality against BF16 on the built-in retrieval set", _eval,
                description="Evaluate a policy file (default: every layer FP8) against the base precision on the "
                "same resident model: MRR and recall@1 against the labels, top-10 agreement and embedding cosine "
                "against BF16, and each metric's delta.")
    e.add_argument("--model", required=True, help="minilm")
    e.add_argument("--policy", metavar="POLICY.yaml", help="policy file (default: every layer at fp8)")
    e.add_argument("--samples", type=int, default=0,
                   help="use N query/document pairs, spread over the whole set (default 0: all of them)")
    add_kernel_option(e)


def _catalog(args) -> int:
    from worker.models import load_model

    model = load_model(args.model)
    if args.output == "json":
        output.as_json({"model": model.name, "layers": model.catalog, "at_base": model.at_base})
        return 0
    # '#' lines are comments to `endpoint create --layers`: the file says what it leaves out, and why.
    for module, why in model.at_base.items():
        print(f"# {module}: not in the catalog, always at base ({why})")
    for layer in model.catalog:
        print(layer)
    return 0


def _eval(args) -> int:
    if args.samples < 0 or args.samples == 1:
        raise InvalidArgument(FieldError("--samples", f"must be 0 (every pair) or >= 2, got {args.samples}"))
    spec = load_policy_file(args.policy) if args.policy else PolicySpec((Rule("*", "fp8"),))
    from worker.engine import HybridEngine
    from worker.models import load_model
    from worker.quality.docstrings import load_pairs
    from worker.quality.shadow import METRICS, ShadowEvaluator

    print(f"loading {args.model} ...", file=sys.stderr)
    model = load_model(args.model)
    precision_map = resolve_or_raise(spec, model.catalog)
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    pairs = load_pairs(args.samples or None)
    print(f"evaluating on {len(pairs)} docstring pairs ({len(pairs) * 2} texts) with kernel {engine.kernel} ...",
          file=sys.stderr)
    result = ShadowEvaluator(engine, model, pairs, progress=True).evaluate(precision_map)
    fp8_layers = sum(p != "bf16" for p in precision_map.values())
    base_dtype = str(engine.base_dtype).removeprefix("torch.")
    if args.output == "json":
        output.as_json({"metrics": result.metrics, "deltas": result.deltas, "reference": result.reference,
                        "samples": result.samples, "kernel": engine.kernel, "base_dtype": base_dtype,
                        "layers": {"total": len(precision_map), "off_base": fp8_layers}})
        return 0
    print(f"{fp8_layers} of {len(precision_map)} layers off base (base weights: {base_dtype}); "
          f"kernel {engine.kernel}; {result.samples} pairs")
    output.table([{"metric": m, "base": f"{result.reference[m]:.5f}", "policy": f"{result.metrics[m]:.5f}",
                   "delta": f"{result.deltas[m]:+.5f}"} for m in METRICS])
    return 0
