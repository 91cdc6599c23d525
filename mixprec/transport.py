"""Channels and listeners with the project's security options: bearer tokens and (mutual) TLS.

Clients send their token as `authorization: Bearer mxp_...` metadata on every call. Without a CA
file a channel is plaintext (loopback development); with one it is TLS, checked against that CA.
"""

from __future__ import annotations

import collections
import pathlib

import grpc

from mixprec.errors import FieldError, InvalidArgument

TOKEN_HEADER = "authorization"
BEARER = "Bearer "


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    if not token:
        return ()
    if not (token.isascii() and token.isprintable()) or len(token) > 200:
        raise InvalidArgument(FieldError("token", "is not a mixprec token (printable ASCII, mxp_...)"))
    return ((TOKEN_HEADER, BEARER + token),)


def _read(path: str, field_name: str) -> bytes:
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(FieldError(field_name, f"cannot read {path!r}: {exc.strerror}")) from None


def client_credentials(tls_ca: str | None, client_cert: str | None = None,
                       client_key: str | None = None) -> grpc.ChannelCredentials | None:
    """TLS credentials trusting `tls_ca` (and presenting a client certificate for mutual TLS)."""
    if not tls_ca:
        if client_cert or client_key:
            raise InvalidArgument(FieldError("--tls-client-cert", "needs --tls-ca (mutual TLS is TLS first)"))
        return None
    if bool(client_cert) != bool(client_key):
        raise InvalidArgument(FieldError("--tls-client-key" if client_cert else "--tls-client-cert",
                                         "is required with the other"))
    cert = _read(client_cert, "--tls-client-cert") if client_cert else None
    key = _read(client_key, "--tls-client-key") if client_key else None
    return grpc.ssl_channel_credentials(_read(tls_ca, "--tls-ca"), key, cert)


def server_credentials(cert: str | None, key: str | None, client_ca: str | None = None):
    """TLS for a listener (None: plaintext). With `client_ca` every client must show a certificate it signed."""
    if not cert and not key:
        if client_ca:
            raise InvalidArgument(FieldError("--client-ca", "needs --tls-cert and --tls-key"))
        return None
    if not (cert and key):
        raise InvalidArgument(FieldError("--tls-cert" if not cert else "--tls-key", "is required with the other"))
    pair = [(_read(key, "--tls-key"), _read(cert, "--tls-cert"))]
    if client_ca:
        return grpc.ssl_server_credentials(pair, _read(client_ca, "--client-ca"), require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def add_port(server, listen: str, credentials) -> int:
    """Bind `listen` with TLS when `credentials` are given, plaintext otherwise."""
    return server.add_secure_port(listen, credentials) if credentials is not None else server.add_insecure_port(listen)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str):
        self._metadata = token_metadata(token)

    def _with_token(self, details):
        metadata = tuple(details.metadata or ()) + self._metadata
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def channel(address: str, token: str | None = None, tls_ca: str | None = None, options=None,
            client_cert: str | None = None, client_key: str | None = None) -> grpc.Channel:
    """A blocking channel that carries `token` on every call, over TLS when `tls_ca` is given (showing
    `client_cert` for mutual TLS)."""
    credentials = client_credentials(tls_ca, client_cert, client_key)
    raw = (grpc.secure_channel(address, credentials, options=options) if credentials is not None
           else grpc.insecure_channel(address, options=options))
    return grpc.intercept_channel(raw, _TokenInterceptor(token)) if token else raw


def aio_channel(address: str, tls_ca: str | None = None, options=None, client_cert: str | None = None,
                client_key: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel (pass `metadata=token_metadata(token)` on its calls)."""
    credentials = client_credentials(tls_ca, client_cert, client_key)
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


def is_loopback(listen: str) -> bool:
    """True when HOST:PORT binds only this machine's loopback interface."""
    import ipaddress

    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
