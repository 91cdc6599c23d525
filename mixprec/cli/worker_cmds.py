"""`mixprec worker`: the agent process (needs the worker extra: torch and the models)."""

from __future__ import annotations

import asyncio
import logging
import os

from mixprec.cli.common import (
    add_kernel_option,
    add_log_level_option,
    add_placement_options,
    add_tls_server_options,
    command,
    given_limits,
)
from mixprec.cli.quality_options import add_data_options, user_metric_spec
from mixprec.errors import FieldError, InvalidArgument
from mixprec.logs import configure_logging
from mixprec.policy import PRECISIONS
from mixprec.transport import is_loopback


def register(sub) -> None:
    p = command(sub, "worker", "run a worker agent: load the model once, serve inference, apply pushed policies",
                _worker, description="Load the model once with BF16 and FP8 weights resident, serve "
                "InferenceService (Embed, or Generate for decoders) on --inference-listen, keep a stream to the control plane, apply each "
                "assigned precision map between batches, report shadow-eval quality and serving throughput, and "
                "serve the last applied policy (kept in --state-dir) while the control plane is away.")
    p.add_argument("--endpoint", required=True, help="the endpoint this worker serves")
    p.add_argument("--model", required=True,
                   help="minilm, gemma3-270m, tiny-llama, hf:PATH (a local causal LM), or package.module:factory")
    p.add_argument("--worker-id", default="", help="stable id of this worker (default: HOSTNAME-PID)")
    p.add_argument("--state-dir", default=".mixprec-state", help="where the last applied assignment is kept")
    p.add_argument("--inference-listen", default="127.0.0.1:0", help="HOST:PORT for InferenceService")
    p.add_argument("--health-listen", default="", metavar="HOST:PORT",
                   help="plaintext gRPC health only, for probes (optional)")
    p.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT (0.0.0.0:9465 in a pod; optional)")
    add_kernel_option(p)
    add_placement_options(p)
    p.add_argument("--residency", default="both", choices=("both", "fp8-only"),
                   help="keep BF16 on the device too (instant switches) or only FP8 (less memory)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="shadow evaluation set: docstring pairs for embedders (default 64), token windows for "
                   "decoders (default 8); 0: off")
    add_data_options(p, "--eval-data")
    p.add_argument("--metric", default=None, metavar="package.module:function",
                   help="your own metric, measured in every shadow evaluation beside the built-in ones and reported "
                   "by name (a rollout guards it with --max-drop NAME=X or --max-rise NAME=X)")
    p.add_argument("--report-interval", type=float, default=5.0, help="seconds between serving reports")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="precisions this worker accepts; assignments using others are refused (NACK)")
    p.add_argument("--inference-auth", choices=("required", "off"), default="auto",
                   help="require a client token on every InferenceService call (default: required unless "
                   "--inference-listen is loopback)")
    p.add_argument("--client-tokens", default=os.environ.get("MIXPREC_CLIENT_TOKENS") or None, metavar="FILE",
                   help="the client tokens InferenceService accepts: one token (mxp_...) or its SHA-256 per line, "
                   "read again when the file changes (env MIXPREC_CLIENT_TOKENS; required when tokens are)")
    p.add_argument("--max-embed-chars", type=int, default=None, metavar="N",
                   help="characters of all of one Embed's texts together (texts x length; default 65536)")
    p.add_argument("--max-generate-tokens", type=int, default=None, metavar="N",
                   help="one Generate's prompt tokens plus max_tokens (default 2048)")
    p.add_argument("--max-inflight", type=int, default=None, metavar="N",
                   help="Generate requests running at once (default 4)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="requests waiting for a place; beyond that RESOURCE_EXHAUSTED at once (default 16)")
    p.add_argument("--embed-batch", type=int, default=None, metavar="N",
                   help="texts of different callers' Embed requests computed together (default 32; 1: no batching)")
    p.add_argument("--embed-wait-ms", type=float, default=None, metavar="MS",
                   help="the longest an Embed waits for others to share its batch (default 5; 0: no wait)")
    add_tls_server_options(p)
    add_log_level_option(p)


def _capacity(args) -> dict:
    """The capacity options given (the worker's defaults for the others), each checked."""
    given = given_limits(args, "max_inflight", "embed_batch")
    for name in ("max_queue", "embed_wait_ms"):
        value = getattr(args, name)
        if value is not None:
            if not 0 <= value <= 60_000:
                raise InvalidArgument(FieldError("--" + name.replace("_", "-"), f"{value} must be 0 to 60000"))
            given[name] = value
    return given


def _client_tokens(args) -> str | None:
    """The client-token file when InferenceService requires tokens (checked readable now), else None."""
    required = args.inference_auth == "required" or (args.inference_auth == "auto"
                                                     and not is_loopback(args.inference_listen))
    if not required:
        return None
    if not args.client_tokens:
        raise InvalidArgument(FieldError("--client-tokens", f"InferenceService on {args.inference_listen} requires "
                                         "client tokens: give the file of them, or --inference-auth off"))
    from worker.client_tokens import ClientTokens

    ClientTokens(args.client_tokens)  # a missing or malformed file is refused before the model loads
    return args.client_tokens


def _worker(args) -> int:
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise InvalidArgument(FieldError("--precisions", f"{args.precisions!r}: choose from {', '.join(PRECISIONS)}"))
    limits = given_limits(args, "max_embed_chars", "max_generate_tokens")
    capacity = _capacity(args)
    metric_spec = user_metric_spec(args.metric)
    if args.metric and metric_spec is None:
        raise InvalidArgument(FieldError("--metric", f"{args.metric!r} is built in (every built-in metric is "
                                         "reported); give package.module:function"))
    if args.eval_samples == 0 and (args.eval_data or metric_spec):
        raise InvalidArgument(FieldError("--eval-samples", "0 turns shadow evaluation off; --eval-data and "
                                         "--metric need it on"))
    client_tokens = _client_tokens(args)
    configure_logging(args.log_level)
    if client_tokens is None and not is_loopback(args.inference_listen):
        logging.getLogger(__name__).warning(
            "InferenceService on %s takes calls without tokens (--inference-auth off): anyone who reaches the port "
            "may use the model", args.inference_listen)
    from worker.agent import AgentConfig, serve
    from worker.runtime import build_runtime
    from worker.serving import Capacity, InferenceLimits

    logging.getLogger(__name__).info("loading %s", args.model)
    runtime = build_runtime(args.model, kernel=args.kernel, residency=args.residency,
                            eval_samples=args.eval_samples, precisions=precisions, device=args.device,
                            dtype=args.dtype, eval_data=args.eval_data, metric=metric_spec,
                            max_data_bytes=args.max_data_bytes)
    config = AgentConfig(
        endpoint=args.endpoint, model=args.model, server=args.server, worker_id=args.worker_id,
        state_dir=args.state_dir, inference_listen=args.inference_listen, report_interval=args.report_interval,
        token=args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca,
        tls_client=(args.tls_client_cert, args.tls_client_key) if args.tls_client_cert else None,
        health_listen=args.health_listen, metrics_listen=args.metrics_listen, client_tokens=client_tokens,
        inference_limits=InferenceLimits(**limits), capacity=Capacity(**capacity),
    )
    asyncio.run(serve(config, runtime))
    return 0
