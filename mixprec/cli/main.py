"""Entry point of the `mixprec` command: global options and subcommand dispatch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import grpc

from mixprec import __version__
from mixprec.cli import exits, output
from mixprec.errors import MixprecError

DEFAULT_SERVER = "127.0.0.1:50051"

# Each module has register(subparsers) and sets `func` on its parsers. Modules whose commands
# need torch import it inside their handlers, so `pip install mixprec` runs every other command.
COMMAND_MODULES = (
    "mixprec.cli.endpoint_cmds",
    "mixprec.cli.policy_cmds",
    "mixprec.cli.server_cmds",
    "mixprec.cli.fleet_cmds",
    "mixprec.cli.rollout_cmds",
    "mixprec.cli.model_cmds",
    "mixprec.cli.worker_cmds",
    "mixprec.cli.generate_cmds",
    "mixprec.cli.sweep_cmds",
    "mixprec.cli.demo_cmds",
    "mixprec.cli.webhook_cmds",
    "mixprec.cli.export_cmds",
    "mixprec.cli.token_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixprec",
        description="Run served neural networks in mixed FP8/BF16 precision, one layer group at a time: "
        "versioned per-endpoint precision policies, worker agents that apply them, quality checks.",
    )
    parser.add_argument("--version", action="version", version=f"mixprec {__version__}")
    parser.add_argument(
        "--server",
        default=os.environ.get("MIXPREC_SERVER", DEFAULT_SERVER),
        help=f"control plane address HOST:PORT (env MIXPREC_SERVER; default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--output", choices=("table", "json"), default="table", help="tables for people, JSON for scripts"
    )
    parser.add_argument("--token", default=os.environ.get("MIXPREC_TOKEN") or None,
                        help="bearer token for the control plane (env MIXPREC_TOKEN; prefer the variable: "
                        "arguments show in ps)")
    parser.add_argument("--tls-ca", default=os.environ.get("MIXPREC_TLS_CA") or None, metavar="FILE",
                        help="CA certificate (PEM) to check the control plane's TLS certificate against "
                        "(env MIXPREC_TLS_CA; without it the connection is plaintext)")
    parser.add_argument("--tls-client-cert", default=os.environ.get("MIXPREC_TLS_CLIENT_CERT") or None,
                        metavar="FILE", help="mutual TLS: this client's certificate (env MIXPREC_TLS_CLIENT_CERT)")
    parser.add_argument("--tls-client-key", default=os.environ.get("MIXPREC_TLS_CLIENT_KEY") or None,
                        metavar="FILE", help="mutual TLS: its private key (env MIXPREC_TLS_CLIENT_KEY)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # One place for the whole CLI: whatever a command prints (tables, messages, errors, logs) shows
    # control characters from operators and agents as escapes instead of handing them to the terminal.
    with output.visible_streams():
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MixprecError as err:
        return exits.report_domain_error(err)
    except grpc.RpcError as err:
        return exits.report_rpc_error(err, args.server, getattr(args, "request_id", None))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `mixprec catalog ... | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
