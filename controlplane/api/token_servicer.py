"""mixprec.v1.TokenService: admins create, list and revoke bearer tokens."""

from __future__ import annotations

from datetime import timedelta

from controlplane import domain
from controlplane.api import convert
from controlplane.api.edge import current_principal
from controlplane.api.errors import maps_domain_errors
from controlplane.api.idempotency import write_rpc
from controlplane.auth import TokenService
from controlplane.blocking import run_blocking
from controlplane.services.write_requests import RequestLog
from mixprec.v1 import auth_pb2 as apb
from mixprec.v1 import auth_pb2_grpc


def token_to_proto(info: domain.TokenInfo) -> apb.Token:
    token = apb.Token(name=info.name, role=info.role, endpoint=info.endpoint or "", created_by=info.created_by,
                      create_time=convert.timestamp(info.created_at), worker_id=info.worker_id or "",
                      bootstrap=info.bootstrap)
    if info.expires_at:
        token.expire_time.CopyFrom(convert.timestamp(info.expires_at))
    if info.revoked_at:
        token.revoke_time.CopyFrom(convert.timestamp(info.revoked_at))
    return token


def without_secret(response: apb.CreateTokenResponse) -> apb.CreateTokenResponse:
    """What a retry of CreateToken is answered: the secret is never stored, not even for retries."""
    return apb.CreateTokenResponse(token=response.token)


class TokenServicer(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, tokens: TokenService, requests: RequestLog | None = None):
        self._tokens = tokens
        self._requests = requests

    @maps_domain_errors
    @write_rpc(apb.CreateTokenResponse, kept=without_secret)
    async def CreateToken(self, request: apb.CreateTokenRequest, context) -> apb.CreateTokenResponse:
        expires = timedelta(seconds=request.expires_seconds) if request.expires_seconds else None
        secret, info = await run_blocking(self._tokens.create, request.name, request.role, request.endpoint,
                                          expires, current_principal().name, request.worker_id, request.bootstrap)
        return apb.CreateTokenResponse(token=token_to_proto(info), secret=secret)

    @maps_domain_errors
    async def ListTokens(self, request: apb.ListTokensRequest, context) -> apb.ListTokensResponse:
        tokens = await run_blocking(self._tokens.list, request.include_revoked)
        return apb.ListTokensResponse(tokens=[token_to_proto(t) for t in tokens])

    @maps_domain_errors
    @write_rpc(apb.Token)
    async def RevokeToken(self, request: apb.RevokeTokenRequest, context) -> apb.Token:
        return token_to_proto(await run_blocking(self._tokens.revoke, request.name, current_principal().name))
