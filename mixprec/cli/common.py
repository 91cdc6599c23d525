"""Options every command accepts, before or after the command name."""

from __future__ import annotations

import argparse

import grpc

from mixprec.errors import FieldError, InvalidArgument

# Defaults are SUPPRESSed here so that a value given after the command name overrides the one
# given before it, and an absent one leaves the top-level default in place.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--server", default=argparse.SUPPRESS, help="control plane address HOST:PORT")
COMMON.add_argument(
    "--output", choices=("table", "json"), default=argparse.SUPPRESS, help="tables for people, JSON for scripts"
)
COMMON.add_argument("--token", default=argparse.SUPPRESS,
                    help="bearer token for the control plane (prefer env MIXPREC_TOKEN: arguments show in ps)")
COMMON.add_argument("--tls-ca", default=argparse.SUPPRESS, metavar="FILE",
                    help="CA certificate (PEM) to check the control plane's TLS certificate against")
COMMON.add_argument("--tls-client-cert", default=argparse.SUPPRESS, metavar="FILE",
                    help="mutual TLS: this client's certificate (PEM)")
COMMON.add_argument("--tls-client-key", default=argparse.SUPPRESS, metavar="FILE",
                    help="mutual TLS: the private key (PEM) of --tls-client-cert")


def command(sub, name: str, help: str, func=None, description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help, parents=[COMMON])
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def add_kernel_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default="auto", choices=("auto", "scaled_mm", "emulated"),
                        help="FP8 matmul: torch._scaled_mm, emulation (quantize, dequantize, matmul), or auto: "
                        "scaled_mm where this device runs it (default auto)")


def add_placement_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype of a command that loads a model (resolved by worker.device: a bad value, or
    cuda on a machine without it, exits 2 before anything loads)."""
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N",
                        help="where the model runs (default auto: the first CUDA device when torch sees one, "
                        "else the CPU)")
    parser.add_argument("--dtype", default="auto", metavar="auto|bf16|fp16|fp32",
                        help="the dtype the model is loaded in, the base precision's real dtype (default auto: "
                        "bf16 on CUDA, fp32 on the CPU)")


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


def add_tls_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", default=None, metavar="FILE",
                        help="serve TLS with this certificate (PEM); without it the listener is plaintext")
    parser.add_argument("--tls-key", default=None, metavar="FILE", help="private key (PEM) of --tls-cert")
    parser.add_argument("--client-ca", default=None, metavar="FILE",
                        help="mutual TLS: accept only clients whose certificate this CA (PEM) signed")


def given_limits(args, *names: str) -> dict:
    """The limits given on the command line (by dest name), each checked to be a number > 0; those not
    given are left out (the server's or worker's defaults apply)."""
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name, value in given.items():
        if not 0 < value < float("inf"):
            raise InvalidArgument(FieldError("--" + name.replace("_", "-"), f"{value} must be a number > 0"))
    return given


def group(sub, name: str, help: str):
    """A command with subcommands of its own (e.g. `mixprec policy create`)."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def channel(args) -> grpc.Channel:
    from mixprec.transport import channel as secure_channel

    return secure_channel(args.server, getattr(args, "token", None), getattr(args, "tls_ca", None),
                          client_cert=getattr(args, "tls_client_cert", None),
                          client_key=getattr(args, "tls_client_key", None))


RPC_TIMEOUT_S = 30.0
MAX_NUMBER = 2**31 - 1  # versions and counts are 32-bit on the server


def count(text: str) -> int:
    """argparse type for versions and counts: an integer from 0 to 2^31-1 (exit 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not 0 <= value <= MAX_NUMBER:
        raise argparse.ArgumentTypeError(f"{value} is out of range: give 0 to {MAX_NUMBER}")
    return value


def to_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def actor(args) -> str:
    import getpass
    import os

    return getattr(args, "author", None) or os.environ.get("MIXPREC_ACTOR") or getpass.getuser()


def timestamp_text(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + "Z"
