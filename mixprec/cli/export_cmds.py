"""`mixprec export`: a stored policy version as a serving engine's quantization config (torch-free)."""

from __future__ import annotations

import json
import pathlib

from mixprec.cli import output
from mixprec.cli.common import RPC_TIMEOUT_S, channel, command
from mixprec.errors import FieldError, InvalidArgument
from mixprec.export import FORMATS, export
from mixprec.families import family_of


def register(sub) -> None:
    p = command(sub, "export", "write a policy version as the quantization config vLLM, SGLang or TensorRT-LLM reads",
                _export, description="Resolve ENDPOINT's policy VERSION and write it in the endpoint model's own "
                "module names: --format compressed-tensors writes DIR/quantization_config.json (the "
                "`quantization_config` of a Hugging Face config.json: config_groups for the FP8 layers, ignore for "
                "the base ones, kv_cache_scheme); --format modelopt writes DIR/hf_quant_config.json (quant_algo "
                "MIXED_PRECISION, quantized_layers, kv_cache_quant_algo). A map that splits a fused group (q/k/v, "
                "gate/up) is refused, naming the group.")
    p.add_argument("endpoint")
    p.add_argument("version", type=int, help="policy version (see `mixprec policy history ENDPOINT`)")
    p.add_argument("--format", required=True, choices=FORMATS, help="the config format the serving engine reads")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="directory to write the config into")


def _export(args) -> int:
    from mixprec.v1 import policy_pb2 as pb
    from mixprec.v1 import policy_pb2_grpc

    if args.version < 1:
        raise InvalidArgument(FieldError("version", f"must be a version number >= 1, got {args.version}"))
    stub = policy_pb2_grpc.PolicyServiceStub(channel(args))
    endpoint = stub.GetEndpoint(pb.GetEndpointRequest(name=args.endpoint), timeout=RPC_TIMEOUT_S)
    family = family_of(endpoint.model)
    if family is None:
        raise InvalidArgument(FieldError("endpoint", f"{args.endpoint!r} serves model {endpoint.model or '(none)'!r}, "
                                         "which has no known module names; export needs minilm, gemma3-270m or "
                                         "hf:PATH (set with `mixprec endpoint create --model`)"))
    version = stub.GetPolicy(pb.GetPolicyRequest(endpoint=args.endpoint, version=args.version, resolved=True),
                             timeout=RPC_TIMEOUT_S)
    result = export(args.format, family, {r.layer: r.precision for r in version.resolved})
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgument(FieldError("--out", f"{args.out} exists and is not a directory"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / result.filename
    path.write_text(json.dumps(result.config, indent=2) + "\n")
    summary = {"file": str(path), "format": args.format, "model": endpoint.model, "family": family.name,
               "version": args.version, "fp8_modules": result.fp8_modules, "base_modules": result.base_modules,
               "kv_cache": result.kv_cache or "-"}
    output.emit(args, summary, [summary])
    return 0
