"""`mixprec demo`: the whole story in one terminal."""

from __future__ import annotations

from mixprec.cli.common import add_placement_options, command
from mixprec.errors import FieldError, InvalidArgument

DEMO_MODELS = ("minilm", "gemma3-270m")


def register(sub) -> None:
    p = command(sub, "demo", "run the end-to-end story: sweep, propose, guarded rollouts, automatic and one-call "
                "rollback", _demo,
                description="Start a control plane on a temporary SQLite file, real workers and steady traffic; "
                "sweep the model, propose its policy, roll it out step by step under quality guardrails, roll out an "
                "over-aggressive policy that is rolled back automatically, roll back in one call, and print a "
                "summary. MiniLM (default): three workers, a few minutes on 2 cores. gemma3-270m: two LLM workers, "
                "Generate traffic, a sweep by layer kind with the KV cache, guardrails on KL and top-1 "
                "agreement (see the README for how long it takes). Needs the worker extra (torch).")
    p.add_argument("--model", default="minilm", choices=DEMO_MODELS, help="the model to tell it on (default minilm)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with logs and the database")
    p.add_argument("--samples", type=int, default=None,
                   help="calibration pairs each MiniLM worker evaluates per change (default 24), or 64-token "
                   "windows for gemma3-270m (default 2)")
    add_placement_options(p)  # the workers' and the sweep's


def _demo(args) -> int:
    if args.samples is not None and not 1 <= args.samples <= 796:
        raise InvalidArgument(FieldError("--samples", f"must be 1..796, got {args.samples}"))
    from worker.device import placement

    placement(args.device, args.dtype)  # refused here, not by each worker it starts
    where = {"device": args.device, "dtype": args.dtype}
    if args.model == "gemma3-270m":
        from mixprec.demo_llm import run as run_llm

        return run_llm(keep=args.keep, windows=args.samples or 2, **where)
    from mixprec.demo import run

    return run(keep=args.keep, samples=args.samples or 24, **where)
