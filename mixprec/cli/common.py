"""Options every command accepts, before or after the command name."""

from __future__ import annotations

import argparse

import grpc

# Defaults are SUPPRESSed here so that a value given after the command name overrides the one
# given before it, and an absent one leaves the top-level default in place.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--server", default=argparse.SUPPRESS, help="control plane address HOST:PORT")
COMMON.add_argument(
    "--output", choices=("table", "json"), default=argparse.SUPPRESS, help="tables for people, JSON for scripts"
)


def command(sub, name: str, help: str, func=None, description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help, parents=[COMMON])
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def add_kernel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default="auto", choices=("auto", "scaled_mm", "emulated"),
                        help="FP8 matmul: torch._scaled_mm, emulation (quantize, dequantize, matmul), or auto: "
                        "scaled_mm where this device runs it (default auto)")


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="least severe log records written to stderr (default INFO)")


def add_request_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-id", default=None, metavar="ID",
                        help="idempotency key: a call retried with the same id is applied once (default: a new "
                        "random id, printed when the outcome is unknown)")


def request_id(args) -> str:
    """The call's idempotency key; generated once per command, so the error message can name it."""
    if not getattr(args, "request_id", None):
        import uuid

        args.request_id = f"cli-{uuid.uuid4().hex}"
    return args.request_id


def group(sub, name: str, help: str):
    """A command with subcommands of its own (e.g. `mixprec policy create`)."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def channel(args) -> grpc.Channel:
    return grpc.insecure_channel(args.server)


RPC_TIMEOUT_S = 30.0


def to_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def actor(args) -> str:
    import getpass
    import os

    return getattr(args, "author", None) or os.environ.get("MIXPREC_ACTOR") or getpass.getuser()


def timestamp_text(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + "Z"
