"""One log line and Prometheus samples per RPC: method, status code, duration."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("mixprec.rpc")


class RpcMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "mixprec_rpc_requests", "RPCs handled, by method and status code", ["method", "code"], registry=registry
        )
        self.duration = Histogram(
            "mixprec_rpc_duration_seconds", "RPC handling time", ["method"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.ack_latency = Histogram(
            "mixprec_assignment_ack_seconds", "Time from sending an assignment to its ACK", registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics):
        self._metrics = metrics

    def _done(self, method: str, context, started: float, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        code = _code_of(context, error)
        self._metrics.requests.labels(method, code.name).inc()
        self._metrics.duration.labels(method).observe(elapsed)
        level = logging.ERROR if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else logging.INFO
        log.log(level, "%s %s %.1fms", method, code.name, elapsed * 1000)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                started, error = time.perf_counter(), None
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._done(method, context, started, error)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream or handler.stream_stream:
            streaming = handler.unary_stream or handler.stream_stream
            make = (
                grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            )

            if inspect.isasyncgenfunction(streaming):

                async def stream(request_or_iterator, context):
                    started, error = time.perf_counter(), None
                    try:
                        async for response in streaming(request_or_iterator, context):
                            yield response
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        self._done(method, context, started, error)

            else:  # a handler that writes with context.write() and returns nothing

                async def stream(request_or_iterator, context):
                    started, error = time.perf_counter(), None
                    try:
                        return await streaming(request_or_iterator, context)
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        self._done(method, context, started, error)

            return make(stream, handler.request_deserializer, handler.response_serializer)
        return handler


def _code_of(context, error: BaseException | None) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if code is not None:
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED  # the peer went away (an agent restarting, a client timing out)
    return grpc.StatusCode.UNKNOWN
