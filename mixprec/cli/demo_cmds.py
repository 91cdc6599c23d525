"""`mixprec demo`: the whole story in one terminal."""

from __future__ import annotations

from mixprec.cli.common import command


def register(sub) -> None:
    p = command(sub, "demo", "run the end-to-end demo: control plane, real MiniLM workers, activate, rollback", _demo,
                description="Start a control plane on a temporary SQLite file and two real MiniLM workers, "
                "send traffic, activate FP8 policies, show quality and throughput reports, roll back in one call, "
                "and print a summary. Needs the worker extra (torch).")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory with logs and the database")
    p.add_argument("--samples", type=int, default=48, help="calibration pairs each worker evaluates per change")


def _demo(args) -> int:
    from mixprec.demo import run

    return run(keep=args.keep, samples=args.samples)
