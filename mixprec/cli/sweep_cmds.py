"""`mixprec sweep`: which layers tolerate FP8, as a policy; `mixprec sweep show` prints a stored sweep."""

from __future__ import annotations

import json
import math
import pathlib
import sys

from mixprec.cli import output
from mixprec.cli.common import RPC_TIMEOUT_S, actor, add_kernel_option, add_placement_options, command, count
from mixprec.cli.endpoint_cmds import stub as policy_stub
from mixprec.cli.policy_cmds import rules_proto
from mixprec.cli.quality_options import (
    add_data_options,
    check_confidence,
    load_data_file,
    load_user_metrics,
    user_metric_spec,
)
from mixprec.errors import FieldError, InvalidArgument
from mixprec.families import LLAMA, family_of
from mixprec.metrics import DATA_WINDOWS, limit_word
from mixprec.policy import PRECISIONS, compact_rules
from mixprec.sweep_summary import quality_lines, word_of
from mixprec.v1 import policy_pb2 as pb

# The budget when none is given: how much worse the sweep's metric may get.
DEFAULT_BUDGET = {"kl_divergence": 0.02, "perplexity": 0.5, "top1_agreement": 0.01}
DEFAULT_CONFIDENCE = 0.95
DECODER_SAMPLES = 16  # windows: fewer than worker.quality.bound.MIN_ITEMS (8) give no bound at all
MIN_HELD = 8          # held-out items below this say nothing (worker.quality.bound.MIN_ITEMS)


def register(sub) -> None:
    p = command(sub, "sweep", "measure each layer alone in FP8 and propose which layers can run it", _sweep,
                description="Sensitivity sweep: each layer (or layer group) alone at --precision, everything else "
                "at base, against base on the calibration set; each unit gets the first precision of the list whose "
                "drop fits --max-drop, then the chosen map is checked together (the most sensitive unit moves down "
                "the list, then to base, while the combined drop is over budget). By default every unit's drop is "
                "estimated from one forward and a few backward passes and only the units a decision depends on are measured "
                "exactly (--exact measures every unit). The chosen map is then trimmed until the upper bound of its drop "
                "at --confidence fits the budget, and measured on --holdout pairs the sweep never saw. --data and "
                "--metric put your own data and metric in place of the built-in ones. Writes MAP.yaml (a policy), MAP.json (every measurement) and MAP.png (a chart). "
                "`mixprec sweep show ENDPOINT VERSION` prints the sweep stored with a proposed version.")
    p.add_argument("show", nargs="*", metavar="show ENDPOINT VERSION", help="print a stored sweep instead")
    p.add_argument("--model", help="the model to sweep: minilm, gemma3-270m, tiny-llama or hf:PATH")
    p.add_argument("--precision", default="fp8", metavar="P[,P...]",
                   help="what each unit is tried at, in order: it gets the first it can take within the budget "
                   f"(one or more of {', '.join(x for x in PRECISIONS if x != 'bf16')}, e.g. fp8,fp8-weight-only; "
                   "default fp8: FP8 weights per channel, activations per token)")
    p.add_argument("--granularity", default="layer", choices=("layer", "fused", "group"),
                   help="one layer at a time; fused: q/k/v of a block as one unit and gate/up as one (what serving "
                   "engines can load); or one layer kind across every block")
    p.add_argument("--metric", default=None, metavar="NAME|package.module:function",
                   help="embedders: cosine_to_base and top10_agreement (agreement with BF16) separate layers far "
                   "better than the label metrics (default cosine_to_base); decoders: kl_divergence (default), "
                   "top1_agreement, perplexity; or your own function (its first declared value is budgeted)")
    add_data_options(p)
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                   help="choose against the upper bound of the drop at this confidence (bootstrap over the "
                   "calibration windows or pairs), not its point value: the chosen map is trimmed until the bound "
                   f"fits the budget (default {DEFAULT_CONFIDENCE}; 0: the point choice)")
    p.add_argument("--max-drop", type=float, default=None, help="quality budget for a metric that must not drop: "
                   "its largest drop (0 keeps everything at base, inf allows everything; default 0.001)")
    p.add_argument("--max-rise", type=float, default=None, help="quality budget for a metric that must not rise "
                   "(kl_divergence, perplexity): its largest rise (default 0.02 for kl_divergence)")
    p.add_argument("--samples", type=int, default=None, help="calibration pairs (2 texts each) for embedders, 2 to "
                   "796 (default 64: under a minute on 2 cores); for decoders, 64-token windows of their text "
                   f"(default {DECODER_SAMPLES}: enough windows for a bound); with --data, at most this many (default: "
                   f"all of the calibration share, decoders up to {DATA_WINDOWS} windows)")
    p.add_argument("--holdout", type=int, default=None, metavar="N",
                   help="pairs (with --data: texts, or query groups) kept out of the sweep, on which the chosen map's "
                   f"drop and bound are measured too (default a quarter of the data, at least {MIN_HELD} pairs; 0: none)")
    p.add_argument("--exact", action="store_true", help="measure every unit exactly instead of estimating first "
                   "(slower; the same decisions unless an estimate misses by more than its learned margin)")
    p.add_argument("-o", "--out", default="sweep.yaml", metavar="MAP.yaml", help="policy file to write; MAP.json and MAP.png go beside it (default sweep.yaml)")
    add_kernel_option(p)
    add_placement_options(p)
    p.add_argument("--propose", metavar="ENDPOINT", help="store the policy as the endpoint's next version")
    p.add_argument("--parent", type=count, default=None,
                   help="version the proposal builds on (default: the latest when the sweep starts)")


def _sweep(args) -> int:
    if args.show:
        return _show(args)
    if not args.model:
        raise InvalidArgument(FieldError("--model", "is required (e.g. --model minilm)"))
    decoder = family_of(args.model) is LLAMA
    if args.samples is not None and args.samples < 2:
        raise InvalidArgument(FieldError("--samples", f"must be >= 2, got {args.samples}"))
    for option in ("max_drop", "max_rise"):
        value = getattr(args, option)
        if value is not None and (math.isnan(value) or value < 0):
            raise InvalidArgument(FieldError(f"--{option.replace('_', '-')}", f"must be >= 0 (or inf), got {value}"))
    if args.holdout is not None and (args.holdout < 0 or (args.holdout == 1 and not args.data)):
        raise InvalidArgument(FieldError("--holdout", f"must be 0 or >= 2, got {args.holdout}"))
    confidence = check_confidence(args.confidence)
    spec = user_metric_spec(args.metric)
    out = pathlib.Path(args.out)
    if out.suffix not in (".yaml", ".yml") or not out.parent.is_dir():
        raise InvalidArgument(FieldError("-o", f"{args.out!r} must be a .yaml file in an existing directory"))
    user_metrics = load_user_metrics(spec)  # before the model: a bad module fails in a second, not a minute
    known = family_of(args.model) is not None  # a user factory's kind is known once it is loaded
    data = load_data_file(args.data, decoder, args.max_data_bytes) if known else None
    args.metric = user_metrics[0].names[0] if user_metrics else \
        (args.metric or ("kl_divergence" if decoder else "cosine_to_base"))
    budget = _budget(args)
    ladder = _ladder(args.precision)

    from worker.engine import HybridEngine
    from worker.models import load_model
    from worker.sweep import run_sweep
    from worker.sweep_progress import SweepBar
    from worker.sweep_report import write_artifacts

    print(f"loading {args.model} ...", file=sys.stderr)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    if not known:
        decoder = model.decoder is not None
        data = load_data_file(args.data, decoder, args.max_data_bytes)
    pairs, held, windows = _split(args, data, decoder)
    parent = _check_endpoint(args, model.catalog) if args.propose else None
    engine = HybridEngine(model.module, model.layer_map, kernel=args.kernel)
    result = run_sweep(model, engine, pairs, metric=args.metric, precision=ladder,
                       granularity=args.granularity, max_drop=budget, holdout=held,
                       algorithm="exact" if args.exact else "fast", progress=SweepBar(args.metric, sys.stderr),
                       confidence=confidence, user_metrics=user_metrics, windows=windows,
                       data=None if data is None else data.fingerprint)
    json_path, png_path = write_artifacts(result, out)
    if args.output == "json":
        output.as_json({**result.to_json(), "files": [str(out), str(json_path), str(png_path)]})
    else:
        data = result.to_json()
        output.table(sweep_table(data))
        print()
        for line in summary_lines(data):
            print(line)
        print(f"{result.seconds:.0f}s on {result.samples} {'token windows' if model.decoder is not None else 'pairs'} "
              f"({result.algorithm} sweep, {result.device} in {result.dtype})")
        print(f"wrote {out} (policy), {json_path} (measurements), {png_path} (chart)")
    if args.propose:
        return _propose(args, result, parent)
    return 0


def _split(args, data, decoder: bool):
    """(calibration pairs, held-out pairs, decoder windows or None): the built-in docstrings, or a quarter of
    the user's data held out (by text, or by query group: no text on both sides)."""
    if data is None:
        from worker.quality.docstrings import load_pairs
        from worker.sweep import split_holdout

        samples = args.samples if args.samples is not None else (DECODER_SAMPLES if decoder else 64)
        holdout = max(MIN_HELD, math.ceil(samples / 3)) if args.holdout is None else args.holdout
        pairs, held = split_holdout(load_pairs(samples + holdout), holdout)
        if len(pairs) < samples:
            print(f"--samples {samples} --holdout {holdout}: the set has {len(pairs) + len(held)} pairs; "
                  f"sweeping {len(pairs)}, holding out {len(held)}", file=sys.stderr)
        return pairs, held, None
    from worker.quality.user_data import query_groups, split_data

    groups = len(query_groups(data.pairs))
    holdout = max(1, round(groups / 4)) if args.holdout is None else args.holdout
    pairs, held = split_data(data.pairs, holdout)
    if decoder:
        return pairs, held, args.samples or DATA_WINDOWS
    return (pairs[:args.samples] if args.samples else pairs), held, None


def _budget(args) -> float:
    """The budget of the sweep's metric, given on the side that is worse for it (mixprec.metrics)."""
    word = limit_word(args.metric)
    wrong = args.max_rise if word == "drop" else args.max_drop
    if wrong is not None:
        option = "--max-rise" if word == "drop" else "--max-drop"
        raise InvalidArgument(FieldError(option, f"{args.metric} must not {word}; give its budget with --max-{word}"))
    given = args.max_drop if word == "drop" else args.max_rise
    return given if given is not None else DEFAULT_BUDGET.get(args.metric, 0.001)


def _check_endpoint(args, catalog: list[str]) -> int:
    """Fail before the long measurement if the endpoint cannot take this model's policy."""
    endpoint = policy_stub(args).GetEndpoint(pb.GetEndpointRequest(name=args.propose), timeout=RPC_TIMEOUT_S)
    if list(endpoint.layers) != list(catalog):
        raise InvalidArgument(FieldError("--propose", f"endpoint {args.propose!r} has a different layer catalog "
                                         f"({len(endpoint.layers)} layers) than {args.model} ({len(catalog)})"))
    return endpoint.latest_version if args.parent is None else args.parent


def _propose(args, result, parent: int) -> int:
    spec = compact_rules(result.precision_map)
    created = policy_stub(args).CreatePolicy(
        pb.CreatePolicyRequest(
            endpoint=args.propose, parent_version=parent, rules=rules_proto(spec), author=actor(args),
            message=f"sensitivity sweep: {result.metric} {limit_word(result.metric)} <= {result.max_drop:g}, "
                    f"{sum(p != 'bf16' for p in result.precision_map.values())}/{len(result.precision_map)} "
                    f"layers {result.precision}",
            artifact_json=json.dumps(result.to_json(), default=str),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    print(f"proposed {created.endpoint} policy version {created.version} (parent {created.parent_version}); "
          f"see it with `mixprec sweep show {created.endpoint} {created.version}`")
    return 0


def _ladder(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    allowed = [x for x in PRECISIONS if x != "bf16"]
    for name in names:
        if name not in allowed:
            raise InvalidArgument(FieldError("--precision", f"{name!r} is not one of {', '.join(allowed)}"))
    if len(set(names)) != len(names):
        raise InvalidArgument(FieldError("--precision", f"{text!r} names a precision twice"))
    return names


def sweep_table(data: dict) -> list[dict]:
    """A sweep's JSON as rows, least sensitive first: unit, its worsening (measured, or ~estimated), what it got."""
    rows = []
    word = word_of(data)
    for unit in sorted(data["units"], key=lambda u: u["drop"]):
        got = unit.get("precision") or (data["precision"] if unit["chosen"] else "bf16")
        verdict = f"{got} (combined check)" if unit["reverted"] else got
        trials = unit.get("trials") or []
        row = {data["granularity"]: unit["name"]}
        if trials:
            for trial in trials:
                value = trial["measured"] if trial["measured"] is not None else trial["estimate"]
                mark = "" if trial["measured"] is not None else "~"
                row[f"{word} at {trial['precision']}"] = "-" if value is None else f"{mark}{value:.6f}"
        else:  # a sweep stored before trials were recorded
            row[f"delta {data['metric']}"] = f"{unit['delta']:+.6f}"
        row["chosen"] = verdict
        rows.append(row)
    return rows


def summary_lines(data: dict) -> list[str]:
    """The chosen map's drop on the calibration pairs and on the held-out ones, and what the fast sweep did."""
    word = word_of(data)
    chosen = sum(p != "bf16" for p in data["precision_map"].values())
    lines = [f"{chosen} of {len(data['precision_map'])} layers below bf16 ({data['precision']}); budget: "
             f"{data['metric']} {word} <= {data['max_drop']:g}; {len(data['combined'])} combined check(s)"]
    lines += quality_lines(data)[0]
    fast = data.get("fast") or {}
    if fast:
        rho = fast.get("rank_correlation_measured")
        lines.append(f"fast sweep: estimated every unit in {fast['estimate_seconds']:.1f}s, measured "
                     f"{len(fast['measured'])} exactly (margin +/-{100 * fast['margin']:.0f}%), "
                     f"{fast['checks_skipped']} combined check(s) the exact walk runs were predicted over budget"
                     + ("" if rho is None else f"; rank correlation of estimate and measurement {rho:.2f}"))
    return lines


def _show(args) -> int:
    if len(args.show) != 3 or args.show[0] != "show" or not args.show[2].isdigit():
        raise InvalidArgument(FieldError("sweep", f"expected `sweep show ENDPOINT VERSION`, got {' '.join(args.show)!r}"))
    _, endpoint, version = args.show
    policy = policy_stub(args).GetPolicy(pb.GetPolicyRequest(endpoint=endpoint, version=int(version), artifact=True),
                                         timeout=RPC_TIMEOUT_S)
    if not policy.has_artifact:
        from mixprec.errors import NotFound

        raise NotFound(f"version {version} of {endpoint!r} was not proposed by a sweep (it has no stored sweep)")
    data = json.loads(policy.artifact_json)
    if args.output == "json":
        output.as_json(data)
        return 0
    print(f"{endpoint} v{policy.version}: {policy.message}")
    output.table(sweep_table(data))
    for check in data["combined"]:
        bound = "" if check.get("bound") is None else f", bound {check['bound']:.6f}"
        print(f"combined check of {len(check['units'])} unit(s): predicted drop {check['predicted_drop']:.6f}, "
              f"measured {check['measured_drop']:.6f}{bound}")
    for line in summary_lines(data):
        print(line)
    return 0
