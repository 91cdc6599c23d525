"""`mixprec catalog` and `mixprec eval`: a model's layer names, and what a policy costs in quality."""

from __future__ import annotations

import sys

from mixprec.cli import output
from mixprec.cli.common import add_kernel_option, add_placement_options, command
from mixprec.cli.quality_options import (
    add_data_options,
    check_confidence,
    load_data_file,
    load_user_metrics,
    user_metric_spec,
)
from mixprec.errors import FieldError, InvalidArgument
from mixprec.metrics import DATA_WINDOWS, DEFAULT_WINDOWS, WINDOW_TOKENS, worsening
from mixprec.policy import PolicySpec, Rule, load_policy_file, resolve_or_raise


def register(sub) -> None:
    c = command(sub, "catalog", "print a model's canonical layer names (the file `endpoint create --layers` takes)",
                _catalog)
    c.add_argument("--model", required=True,
                   help="minilm, gemma3-270m, tiny-llama, hf:PATH (a local causal LM), or package.module:factory")
    add_placement_options(c)

    e = command(sub, "eval", "measure a policy's quality against BF16 on your --data or the built-in standard-library text", _eval,
                description="Evaluate a policy file (default: every layer FP8) against the base precision on the "
                "same resident model. Embedders: MRR and recall@1 against the labels, top-10 agreement and "
                "embedding cosine against BF16. Decoders: KL(base || policy) over the full vocabulary, top-1 "
                "agreement, perplexity on docstring windows, and greedy-token match. Each metric's delta.")
    e.add_argument("--model", required=True, help="minilm, gemma3-270m, tiny-llama or hf:PATH")
    e.add_argument("--policy", metavar="POLICY.yaml", help="policy file (default: every layer at fp8)")
    e.add_argument("--samples", type=int, default=0,
                   help="embedders: N query/document pairs (default 0: all of them); decoders: N windows of "
                   f"{WINDOW_TOKENS} tokens (default 0: {DEFAULT_WINDOWS})")
    e.add_argument("--prompts", type=int, default=4, help="decoders: prompts for greedy_match (default 4; 0: skip)")
    e.add_argument("--greedy-tokens", type=int, default=16,
                   help="decoders: greedy tokens per prompt for greedy_match (default 16)")
    add_data_options(e)
    e.add_argument("--metric", default=None, metavar="package.module:function",
                   help="your own metric, measured beside the built-in ones (its declared direction says which way "
                   "is worse)")
    e.add_argument("--confidence", type=float, default=0.95,
                   help="print each metric's upper bound of its worsening at this confidence, from a bootstrap over "
                   "the windows or pairs (default 0.95; 0: none)")
    add_kernel_option(e)
    add_placement_options(e)


def _catalog(args) -> int:
    from worker.models import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device)
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
    for name in ("prompts", "greedy_tokens"):
        if not 0 <= getattr(args, name) <= 256:
            raise InvalidArgument(FieldError(f"--{name.replace('_', '-')}", f"must be 0..256, got {getattr(args, name)}"))
    confidence = check_confidence(args.confidence)
    metric_spec = user_metric_spec(args.metric)
    if args.metric and metric_spec is None:
        raise InvalidArgument(FieldError("--metric", f"{args.metric!r} is built in (eval measures every built-in "
                                         "metric); give package.module:function"))
    spec = load_policy_file(args.policy) if args.policy else PolicySpec((Rule("*", "fp8"),))
    user_metrics = load_user_metrics(metric_spec)
    from worker.engine import HybridEngine
    from worker.models import load_model

    print(f"loading {args.model} ...", file=sys.stderr)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    data = load_data_file(args.data, model.decoder is not None, args.max_data_bytes)
    precision_map = resolve_or_raise(spec, model.catalog)
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    if model.decoder is not None:
        from worker.quality.language import METRICS, language_evaluator

        if data is None:
            evaluator = language_evaluator(engine, model, args.samples or DEFAULT_WINDOWS, args.prompts,
                                           args.greedy_tokens, progress=True, user_metrics=user_metrics)
        else:
            from worker.quality.evaluators import evaluator_for

            evaluator = evaluator_for(engine, model, data.pairs, True, user_metrics, args.samples or DATA_WINDOWS,
                                      args.prompts, args.greedy_tokens)
        unit = f"windows of {WINDOW_TOKENS} tokens"
        metrics = (METRICS if args.prompts else METRICS[:3]) + evaluator.metrics[3:]
    else:
        from worker.quality.docstrings import load_pairs
        from worker.quality.shadow import ShadowEvaluator

        pairs = load_pairs(args.samples or None) if data is None else data.pairs[:args.samples or None]
        evaluator = ShadowEvaluator(engine, model, pairs, progress=True, user_metrics=user_metrics)
        unit, metrics = "docstring pairs" if data is None else "pairs", evaluator.metrics
    print(f"evaluating on {evaluator.samples} {unit} on {engine.device} with kernel {engine.kernel} ...", file=sys.stderr)
    result = evaluator.evaluate(precision_map)
    from worker.quality.bound import result_bound

    bounds = {m: result_bound(m, result, confidence) for m in metrics}
    fp8_layers = sum(p != "bf16" for p in precision_map.values())
    base_dtype = str(engine.base_dtype).removeprefix("torch.")
    if args.output == "json":
        output.as_json({"metrics": result.metrics, "deltas": result.deltas, "reference": result.reference,
                        "samples": result.samples, "kernel": engine.kernel, "base_dtype": base_dtype,
                        "bounds": bounds, "confidence": confidence,
                        "data": {"builtin": "docstrings"} if data is None else data.fingerprint,
                        "device": str(engine.device),
                        "layers": {"total": len(precision_map), "off_base": fp8_layers}})
        return 0
    print(f"{fp8_layers} of {len(precision_map)} layers off base (base weights: {base_dtype} on {engine.device}); "
          f"kernel {engine.kernel}; {result.samples} {unit}")
    output.table([{"metric": m, "base": f"{result.reference[m]:.5f}", "policy": f"{result.metrics[m]:.5f}",
                   "delta": f"{result.deltas[m]:+.5f}", "worse by": f"{worsening(m, result.deltas[m]):+.5f}",
                   **({f"{100 * confidence:g}% bound": "-" if bounds[m] is None else f"{bounds[m]:+.5f}"}
                      if confidence else {})}
                  for m in metrics])
    return 0
