"""The server edge every RPC passes: authenticate, check limits, authorize, and keep internals inside.

Order per call: the token is checked first (no garbage reaches anything else), then the request's
fields against `limits`, then the role and endpoint scope against the method's rule. The handler
runs with the caller's Principal in `current_principal()`. An unexpected exception is logged with
an id and answered INTERNAL with that id only: never SQL, parameters or a stack.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from controlplane.api.errors import abort_with
from controlplane.api.limits import check_request, lenient
from controlplane.auth import ANONYMOUS, Action, Authenticator, Principal, authorize
from controlplane.blocking import run_blocking
from mixprec.errors import MixprecError, PermissionDenied
from mixprec.transport import BEARER, TOKEN_HEADER

log = logging.getLogger(__name__)

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("mixprec_principal")
_endpoint: contextvars.ContextVar[str] = contextvars.ContextVar("mixprec_call_endpoint", default="")


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled."""
    return _principal.get()


def call_endpoint() -> str:
    """The endpoint the RPC being handled was authorized for ("" for calls about no endpoint)."""
    return _endpoint.get()


@dataclass(frozen=True)
class Rule:
    action: Action
    endpoint_field: str | None  # the request field naming the endpoint the call is about


def _rules(service: str, action: Action, field: str | None, *methods: str) -> dict[str, Rule]:
    return {f"/mixprec.v1.{service}/{m}": Rule(action, field) for m in methods}


# Every method of every mixprec service; a method missing here is refused (fail closed).
RPC_RULES: dict[str, Rule] = {
    **_rules("PolicyService", Action.ADMIN_ENDPOINTS, "name", "CreateEndpoint", "DeleteEndpoint"),
    **_rules("PolicyService", Action.READ, "name", "GetEndpoint"),
    **_rules("PolicyService", Action.READ, None, "ListEndpoints"),
    **_rules("PolicyService", Action.WRITE_POLICY, "endpoint", "CreatePolicy"),
    **_rules("PolicyService", Action.READ, "endpoint", "GetPolicy", "ListPolicies", "DiffPolicies", "ResolvePolicy"),
    **_rules("FleetService", Action.ACTIVATE, "endpoint", "Activate"),
    **_rules("FleetService", Action.ROLLBACK, "endpoint", "Rollback"),
    **_rules("FleetService", Action.READ, "endpoint", "GetFleet", "ListAudit"),
    **_rules("FleetService", Action.TAKE_OVER_WORKER, "endpoint", "TakeOverWorker"),
    **_rules("RolloutService", Action.ROLLOUT, "endpoint", "StartRollout", "PauseRollout", "ResumeRollout",
             "AbortRollout", "PromoteRollout"),
    **_rules("RolloutService", Action.READ, "endpoint", "GetRollout", "ListRollouts"),
    # The hello names the endpoint; AgentServicer checks the scope there.
    **_rules("AgentService", Action.CONNECT, None, "Connect"),
    **_rules("TokenService", Action.ADMIN_TOKENS, None, "CreateToken", "ListTokens", "RevokeToken"),
    **_rules("NotificationService", Action.NOTIFICATIONS, "endpoint", "SetWebhook", "DeleteWebhook", "TestWebhook"),
    **_rules("NotificationService", Action.READ, "endpoint", "ListWebhooks"),
}

# Probes need no token: health carries no data, and reflection describes only the wire contract,
# which is public in proto/ (it lets grpcurl and the hostile-input suite find every method).
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def audit_actor(principal: Principal, claimed: str = "") -> str:
    """What the audit log records: the token's name; a client-supplied actor only as a remark beside it."""
    if principal is ANONYMOUS:  # --auth off: there is no identity but the one the client gives
        return claimed or principal.name
    if claimed and claimed != principal.name:
        return f"{principal.name} (remark: {claimed})"
    return principal.name


def actor(claimed: str = "") -> str:
    """The audit actor of the RPC being handled."""
    return audit_actor(current_principal(), claimed)


def _token_of(metadata) -> str:
    for key, value in metadata or ():
        if key == TOKEN_HEADER:
            text = value if isinstance(value, str) else value.decode("latin-1")
            return text[len(BEARER):].strip() if text.startswith(BEARER) else text.strip()
    return ""


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """`authenticator=None` is `--auth off`: every call runs as ANONYMOUS (loopback only)."""

    def __init__(self, authenticator: Authenticator | None):
        self._authenticator = authenticator

    async def _principal_for(self, metadata) -> Principal:
        if self._authenticator is None:
            return ANONYMOUS
        token = _token_of(metadata)
        cached = self._authenticator.cached(token) if token else None
        return cached or await run_blocking(self._authenticator.authenticate, token)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        rule = RPC_RULES.get(method)
        try:
            if rule is None:
                raise PermissionDenied(f"{method} has no authorization rule on this server")
            principal = await self._principal_for(details.invocation_metadata)
            refusal = None
        except MixprecError as err:
            principal, refusal = None, err
        except Exception:  # noqa: BLE001 - e.g. the token table cannot be read
            principal, refusal = None, _internal(method)
        return _wrap(handler, method, rule, principal, refusal)


class _Internal(MixprecError):
    pass


def _internal(method: str) -> MixprecError:
    incident = uuid.uuid4().hex[:12]
    log.exception("internal error %s in %s", incident, method)
    return _Internal(f"internal error {incident}; the server's log has the details")


def _wrap(handler, method: str, rule: Rule | None, principal: Principal | None, refusal: MixprecError | None):
    async def admit(request, context) -> None:
        """Checks a decoded request; on refusal aborts the call (raises), else binds the principal.
        Each RPC runs in its own task, so the binding ends with the call."""
        if refusal is not None:
            await abort_with(context, refusal)
        try:
            if request is not None:
                check_request(request)
            endpoint = getattr(request, rule.endpoint_field, "") if rule.endpoint_field and request else ""
            authorize(principal, rule.action, endpoint or None)
        except MixprecError as err:
            await abort_with(context, err)
        except Exception:  # noqa: BLE001 - a check that broke must not leak what broke it
            await abort_with(context, _internal(method))
        _principal.set(principal)
        _endpoint.set(endpoint or "")

    async def guarded(call: Callable, *args):
        context = args[-1]
        try:
            return await call(*args)
        except grpc.aio.AbortError:
            raise
        except MixprecError as err:  # a servicer that did not map its own error
            await abort_with(context, err)
        except Exception:  # noqa: BLE001 - whatever it was, the caller gets an id, not internals
            await abort_with(context, _internal(method))

    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await admit(request, context)
            return await guarded(inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, lenient(handler.request_deserializer), handler.response_serializer)

    streaming = handler.stream_stream or handler.unary_stream or handler.stream_unary
    client_streams = handler.unary_stream is None
    if inspect.isasyncgenfunction(streaming):

        async def stream(request_or_iterator, context):
            await admit(None if client_streams else request_or_iterator, context)
            try:
                async for response in streaming(request_or_iterator, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except MixprecError as err:
                await abort_with(context, err)
            except Exception:  # noqa: BLE001
                await abort_with(context, _internal(method))
    else:

        async def stream(request_or_iterator, context):
            await admit(None if client_streams else request_or_iterator, context)
            return await guarded(streaming, request_or_iterator, context)

    if handler.stream_stream:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.unary_stream:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.stream_unary_rpc_method_handler
    return make(stream, lenient(handler.request_deserializer), handler.response_serializer)

