"""`mixprec endpoint create|list|show|delete`."""

from __future__ import annotations

import sys

from mixprec.cli import output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    actor,
    add_request_id_option,
    channel,
    command,
    group,
    request_id,
    timestamp_text,
    to_dict,
)
from mixprec.errors import FieldError, InvalidArgument
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import policy_pb2_grpc


def register(sub) -> None:
    endpoint = group(sub, "endpoint", "create and inspect model endpoints")
    p = command(endpoint, "create", "create an endpoint with its layer catalog", _create,
                description="Create an endpoint. FILE lists the model's canonical layer names, one per line "
                "(`mixprec catalog --model minilm > layers.txt` writes it).")
    p.add_argument("name", help="endpoint name: a lowercase DNS label, e.g. search-embedder")
    p.add_argument("--layers", metavar="FILE", help="layer catalog file, one canonical name per line; "
                   "without it the first worker reports the catalog")
    p.add_argument("--base", default="bf16", help="precision of layers no rule matches (default bf16)")
    p.add_argument("--model", default="", help="model name, e.g. minilm")
    add_request_id_option(p)
    command(endpoint, "list", "list every endpoint", _list)
    s = command(endpoint, "show", "show one endpoint and its layer catalog", _show)
    s.add_argument("name")
    d = command(endpoint, "delete", "delete an endpoint with its versions, workers and rollouts (admin)", _delete,
                description="Delete an endpoint and everything that belongs to it; the audit log keeps its "
                "history and records who deleted it and why. Needs an admin token.")
    d.add_argument("name")
    d.add_argument("--reason", required=True, help="why, for the audit log")
    add_request_id_option(d)


def stub(args) -> policy_pb2_grpc.PolicyServiceStub:
    return policy_pb2_grpc.PolicyServiceStub(channel(args))


MAX_LAYER_FILE = 1_000_000  # the server's limit on a catalog's total characters


def read_layer_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh.read(MAX_LAYER_FILE + 1).splitlines()]
    except OSError as exc:
        raise InvalidArgument(FieldError("--layers", f"cannot read {path!r}: {exc.strerror}")) from None
    except UnicodeDecodeError as exc:
        raise InvalidArgument(FieldError("--layers", f"{path!r} is not UTF-8 text (byte {exc.start})")) from None
    if sum(len(line) + 1 for line in lines) > MAX_LAYER_FILE:
        raise InvalidArgument(FieldError("--layers", f"{path!r} is larger than the limit of {MAX_LAYER_FILE} characters"))
    layers = [line for line in lines if line and not line.startswith("#")]
    if not layers:
        raise InvalidArgument(FieldError("--layers", f"{path!r} lists no layer names"))
    return layers


def _create(args) -> int:
    layers = read_layer_file(args.layers) if args.layers else []
    endpoint = stub(args).CreateEndpoint(
        pb.CreateEndpointRequest(
            name=args.name, base_precision=args.base, model=args.model, layers=layers, actor=actor(args),
            request_id=request_id(args),
        ),
        timeout=RPC_TIMEOUT_S,
    )
    if args.output == "json":
        output.as_json(to_dict(endpoint))
    else:
        print(f"created endpoint {endpoint.name} ({len(endpoint.layers)} layers, base {endpoint.base_precision})")
    return 0


def _row(e: pb.Endpoint) -> dict:
    return {
        "name": e.name,
        "model": e.model or "-",
        "base": e.base_precision,
        "layers": e.layer_count,
        "latest": e.latest_version or "-",
        "active": e.active_version or "-",
        "created": timestamp_text(e.create_time),
    }


def _list(args) -> int:
    response = stub(args).ListEndpoints(pb.ListEndpointsRequest(), timeout=RPC_TIMEOUT_S)
    output.emit(args, [to_dict(e) for e in response.endpoints], rows=[_row(e) for e in response.endpoints])
    return 0


def _show(args) -> int:
    e = stub(args).GetEndpoint(pb.GetEndpointRequest(name=args.name), timeout=RPC_TIMEOUT_S)
    if args.output == "json":
        output.as_json(to_dict(e))
        return 0
    output.key_values(list(_row(e).items()))
    print("catalog:")
    for layer in e.layers:
        print(f"  {layer}")
    if not e.layers:
        print("  (none yet: the first worker will report it)", file=sys.stdout)
    return 0


def _delete(args) -> int:
    response = stub(args).DeleteEndpoint(
        pb.DeleteEndpointRequest(name=args.name, reason=args.reason, actor=actor(args), request_id=request_id(args)),
        timeout=RPC_TIMEOUT_S,
    )
    print(f"deleted endpoint {response.name} and its {response.policy_versions} policy versions")
    return 0
