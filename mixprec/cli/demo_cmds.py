"""`mixprec demo`: the whole story in one terminal."""

from __future__ import annotations

from mixprec.cli.common import command


def register(sub) -> None:
    p = command(sub, "demo", "run the end-to-end story: sweep, propose, guarded rollouts, automatic and one-call "
                "rollback", _demo,
                description="Start a control plane on a temporary SQLite file, three real MiniLM workers and a load "
                "generator; sweep the model, propose its policy, roll it out step by step under a quality guardrail, "
                "roll out an over-aggressive policy that is rolled back automatically, roll back in one call, and "
                "print a summary. Needs the worker extra (torch); takes a few minutes on 2 cores.")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with logs and the database")
    p.add_argument("--samples", type=int, default=24, help="calibration pairs each worker evaluates per change")


def _demo(args) -> int:
    from mixprec.demo import run

    return run(keep=args.keep, samples=args.samples)
