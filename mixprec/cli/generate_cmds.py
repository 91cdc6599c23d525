"""`mixprec generate`: text (greedy unless sampling is asked) from a decoder worker's InferenceService, streamed as it comes."""

from __future__ import annotations

import sys

from mixprec.cli import output
from mixprec.cli.common import command
from mixprec.errors import FieldError, InvalidArgument

GENERATE_TIMEOUT_S = 600.0  # a long generation on CPU takes minutes


def register(sub) -> None:
    g = command(sub, "generate", "generate text on a decoder worker (prints the text and the policy version)",
                _generate, description="Send PROMPT to a worker's InferenceService.Generate and print the "
                "continuation (greedy unless --temperature is given) as it streams in, then the policy version "
                "whose precision map (KV cache included) produced it and the prefill/decode tokens per second.")
    g.add_argument("--worker", required=True, metavar="HOST:PORT", help="the worker's --inference-listen address")
    g.add_argument("--max-tokens", type=int, default=32, help="tokens to generate (1..1024, default 32)")
    g.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature, 0..2 (default 0: greedy, the quality reference)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the likeliest tokens up to this "
                   "probability mass, (0, 1] (default 1)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the K likeliest tokens (default 0: all)")
    g.add_argument("--seed", type=int, default=None,
                   help="sampling seed: the same seed, map and prompt give the same text (default: random)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable, at most 4)")
    g.add_argument("prompt", help="the text to continue")


def _generate(args) -> int:
    if not 1 <= args.max_tokens <= 1024:
        raise InvalidArgument(FieldError("--max-tokens", f"must be 1..1024, got {args.max_tokens}"))
    if not args.prompt:
        raise InvalidArgument(FieldError("prompt", "is empty"))
    if args.top_k < 0:
        raise InvalidArgument(FieldError("--top-k", f"must be 0 or more, got {args.top_k}"))
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise InvalidArgument(FieldError("--seed", f"must be 0 to 2**64-1, got {args.seed}"))
    from mixprec.transport import channel
    from mixprec.v1 import inference_pb2 as ipb
    from mixprec.v1 import inference_pb2_grpc

    # A worker that requires tokens takes a client token (one its --client-tokens file lists).
    stub = inference_pb2_grpc.InferenceServiceStub(channel(args.worker, getattr(args, "token", None),
                                                           getattr(args, "tls_ca", None)))
    request = ipb.GenerateRequest(prompt=args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k, stop=args.stop)
    if args.top_p is not None:
        request.top_p = args.top_p
    if args.seed is not None:
        request.seed = args.seed
    stream = stub.Generate(request, timeout=GENERATE_TIMEOUT_S)
    pieces, versions, last = [], set(), None
    for response in stream:
        versions.add(response.policy_version)
        if response.done:
            last = response
        elif response.text:
            pieces.append(response.text)
            if args.output != "json":
                sys.stdout.write(response.text)
                sys.stdout.flush()
    version = last.policy_version if last else min(versions, default=0)
    if args.output == "json":
        output.as_json({"text": "".join(pieces), "policy_version": version,
                        "prompt_tokens": last.prompt_tokens if last else 0,
                        "generated_tokens": last.generated_tokens if last else 0,
                        "finish_reason": last.finish_reason if last else "",
                        "prefill_tokens_per_second": last.prefill_tokens_per_second if last else 0.0,
                        "decode_tokens_per_second": last.decode_tokens_per_second if last else 0.0})
        return 0
    print()
    if last is not None:
        print(f"[policy v{version}; {last.generated_tokens} tokens; prefill {last.prefill_tokens_per_second:.1f} "
              f"tok/s, decode {last.decode_tokens_per_second:.1f} tok/s]")
    return 0
