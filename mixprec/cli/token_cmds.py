"""`mixprec token create|list|revoke`: through the server (admin token), or straight on the database
with --db (how the first admin token is made; no server needed)."""

from __future__ import annotations

import sys

from mixprec.cli import exits, output
from mixprec.cli.common import (
    RPC_TIMEOUT_S,
    add_request_id_option,
    channel,
    command,
    group,
    request_id,
    timestamp_text,
)
from mixprec.errors import FieldError, InvalidArgument

ROLES = ("viewer", "operator", "admin", "agent", "client")


def register(sub) -> None:
    token = group(sub, "token", "create, list and revoke the bearer tokens of the control plane's callers")
    db_help = ("database URL: work on the database directly, without a server (how the first admin token is "
               "made); without it the call goes to --server with an admin --token")
    c = command(token, "create", "create a token; it is printed this once and only its hash is stored", _create)
    c.add_argument("name", help="token name, a lowercase DNS label (e.g. ci-deployer); the audit log shows it")
    c.add_argument("--role", required=True, choices=ROLES,
                   help="viewer: reads; operator: policies, activate, rollback, rollouts; admin: endpoints "
                   "and tokens; agent: worker streams only; client: nothing on the control plane, a caller of the "
                   "workers' InferenceService (list it in their --client-tokens file)")
    c.add_argument("--endpoint", default="", help="limit the token to this one endpoint")
    bound = c.add_mutually_exclusive_group()
    bound.add_argument("--worker-id", default="", metavar="ID",
                       help="role agent with --endpoint: the token may connect as this one worker id only")
    bound.add_argument("--bootstrap", action="store_true",
                       help="role agent: issue each worker id its own token once, at its first hello (the worker "
                       "keeps it in its --state-dir); what a fleet's shared Secret should hold")
    c.add_argument("--expires", default="", metavar="DURATION", help="e.g. 12h, 30d, 2w (default: never)")
    c.add_argument("--db", default=None, metavar="URL", help=db_help)
    add_request_id_option(c)
    ls = command(token, "list", "list tokens (never their secrets)", _list)
    ls.add_argument("--all", action="store_true", help="include revoked tokens")
    ls.add_argument("--db", default=None, metavar="URL", help=db_help)
    r = command(token, "revoke", "revoke a token by name; calls with it fail from then on", _revoke)
    r.add_argument("name")
    r.add_argument("--db", default=None, metavar="URL", help=db_help)
    add_request_id_option(r)


def _direct(url: str):
    """A TokenService over the database at `url` (migrating an embedded SQLite file first)."""
    from controlplane.auth import TokenService
    from controlplane.storage.database import ensure_schema, open_engine
    from controlplane.storage.unit_of_work import unit_of_work_factory

    engine = open_engine(url)
    ensure_schema(engine)
    return TokenService(unit_of_work_factory(engine))


def _stub(args):
    from mixprec.v1 import auth_pb2_grpc

    return auth_pb2_grpc.TokenServiceStub(channel(args))


def _info_row(name, role, endpoint, created_by, created, expires, revoked, worker_id="", bootstrap=False) -> dict:
    worker = worker_id or ("(bootstrap)" if bootstrap else "*" if role == "agent" else "-")
    return {"name": name, "role": role, "endpoint": endpoint or "*", "worker": worker, "created_by": created_by or "-",
            "created": created, "expires": expires or "never", "revoked": revoked or "-"}


def _domain_row(info) -> dict:
    def text(at):
        return at.strftime("%Y-%m-%d %H:%M:%S") + "Z" if at else ""

    return _info_row(info.name, info.role, info.endpoint, info.created_by, text(info.created_at),
                     text(info.expires_at), text(info.revoked_at), info.worker_id or "", info.bootstrap)


def _proto_row(t) -> dict:
    def text(field):
        return timestamp_text(getattr(t, field)) if t.HasField(field) else ""

    return _info_row(t.name, t.role, t.endpoint, t.created_by, text("create_time"), text("expire_time"),
                     text("revoke_time"), t.worker_id, t.bootstrap)


def _direct_write(args) -> bool:
    """Whether this write goes straight to the database (--db), where no request id is kept."""
    if args.db and args.request_id:
        raise InvalidArgument(FieldError("--request-id", "is kept by the server; with --db the write goes straight "
                                         "to the database, once"))
    return bool(args.db)


def _create(args) -> int:
    from controlplane.auth import parse_duration

    expires = parse_duration(args.expires) if args.expires else None
    if _direct_write(args):
        secret, info = _direct(args.db).create(args.name, args.role, args.endpoint, expires, created_by="",
                                               worker_id=args.worker_id, bootstrap=args.bootstrap)
        row = _domain_row(info)
    else:
        from mixprec.v1 import auth_pb2

        response = _stub(args).CreateToken(
            auth_pb2.CreateTokenRequest(name=args.name, role=args.role, endpoint=args.endpoint,
                                        expires_seconds=int(expires.total_seconds()) if expires else 0,
                                        worker_id=args.worker_id, bootstrap=args.bootstrap,
                                        request_id=request_id(args)),
            timeout=RPC_TIMEOUT_S,
        )
        secret, row = response.secret, _proto_row(response.token)
        if not secret:  # a retry of a request an earlier try applied: the secret went to that try only
            print(f"error: request {args.request_id} already created token {row['name']}; its secret was shown "
                  f"only to that call and is not stored. Revoke it (mixprec token revoke {row['name']}) and create "
                  "a new one", file=sys.stderr)
            return exits.CONFLICT
    if args.output == "json":
        output.as_json(row | {"token": secret})
        return 0
    scope = f"endpoint {args.endpoint}" if args.endpoint else "every endpoint"
    if args.worker_id:
        scope += f", worker id {args.worker_id}"
    elif args.bootstrap:
        scope += ", bootstrap: issues each worker id its own token once"
    print(f"created token {row['name']} (role {row['role']}, {scope}, expires {row['expires']})", file=sys.stderr)
    print("it is shown only this once; store it now (e.g. export MIXPREC_TOKEN=...):", file=sys.stderr)
    print(secret)
    return 0


def _list(args) -> int:
    if args.db:
        rows = [_domain_row(t) for t in _direct(args.db).list(include_revoked=args.all)]
    else:
        from mixprec.v1 import auth_pb2

        response = _stub(args).ListTokens(auth_pb2.ListTokensRequest(include_revoked=args.all), timeout=RPC_TIMEOUT_S)
        rows = [_proto_row(t) for t in response.tokens]
    output.emit(args, rows)
    return 0


def _revoke(args) -> int:
    if _direct_write(args):
        _direct(args.db).revoke(args.name)
    else:
        from mixprec.v1 import auth_pb2

        _stub(args).RevokeToken(auth_pb2.RevokeTokenRequest(name=args.name, request_id=request_id(args)),
                                timeout=RPC_TIMEOUT_S)
    print(f"revoked token {args.name}")
    return 0
