"""`mixprec server` and `mixprec migrate`."""

from __future__ import annotations

import asyncio
import os

from mixprec.cli.common import add_log_level_option, add_tls_server_options, command, given_limits
from mixprec.logs import configure_logging

DEFAULT_DB = "sqlite:///mixprec.db"
DEFAULT_LISTEN = "127.0.0.1:50051"


def register(sub) -> None:
    p = command(
        sub,
        "server",
        "run the control plane (gRPC) until SIGTERM",
        _server,
        description="Run the control plane: endpoints, policy versions and (later) agent streams over gRPC. "
        "An empty SQLite file is migrated on start; Postgres must be migrated first with `mixprec migrate`.",
    )
    p.add_argument("--db", default=os.environ.get("MIXPREC_DB", DEFAULT_DB),
                   help=f"database URL (env MIXPREC_DB, default {DEFAULT_DB}); "
                   "Postgres: postgresql+psycopg://USER@HOST:5432/DB")
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve gRPC on (default {DEFAULT_LISTEN})")
    p.add_argument("--redis", default=os.environ.get("MIXPREC_REDIS") or None, metavar="URL",
                   help="redis://HOST:6379/0 to tell other replicas about changes at once (env MIXPREC_REDIS; optional)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT (0.0.0.0:9464 in a pod)")
    p.add_argument("--health-listen", default=None, metavar="HOST:PORT",
                   help="plaintext gRPC health only, for probes when --listen uses TLS")
    p.add_argument("--http-listen", default=None, metavar="HOST:PORT",
                   help="serve the web dashboard on HOST:PORT, e.g. 127.0.0.1:8080 (default: no dashboard); "
                   "it takes the same tokens and, with --tls-cert/--tls-key, serves HTTPS")
    p.add_argument("--auth", choices=("required", "off"), default="auto",
                   help="require a bearer token on every call (default: required unless --listen is loopback; "
                   "off is refused beyond loopback)")
    p.add_argument("--max-streams-per-token", type=int, default=None, metavar="N",
                   help="agent streams one token (or, with --auth off, all agents) may hold open on this replica "
                   "(default 1000; a fleet sharing one agent token needs its size here)")
    p.add_argument("--max-worker-ids-per-token", type=int, default=None, metavar="N",
                   help="distinct worker ids one token may hold for one endpoint on this replica, live or ended "
                   "within the hour (default 1000): each becomes a row and metric series")
    p.add_argument("--max-reports-per-token", type=float, default=None, metavar="R",
                   help="reports a second one token's streams may send together (default 500; more are dropped)")
    p.add_argument("--max-reports-per-worker", type=float, default=None, metavar="R",
                   help="reports a second one stream may send (default 1, with bursts of 30 s of it)")
    p.add_argument("--max-resolutions-per-token", type=int, default=None, metavar="N",
                   help="policy resolutions (ResolvePolicy, DiffPolicies, GetPolicy --resolved) one token may run "
                   "at once (default 2; 4 at once on the whole replica)")
    p.add_argument("--webhook-allow", action="append", default=[], metavar="CIDR",
                   help="let webhooks reach this non-public address range, e.g. 10.0.0.0/8 for an in-cluster "
                   "receiver (repeatable; by default loopback, link-local and private addresses are refused)")
    add_tls_server_options(p)
    add_log_level_option(p)

    m = command(sub, "migrate", "upgrade a database to the newest schema", _migrate,
                description="Apply every pending Alembic migration to the database (idempotent).")
    m.add_argument("--db", default=os.environ.get("MIXPREC_DB", DEFAULT_DB),
                   help=f"database URL (env MIXPREC_DB, default {DEFAULT_DB})")


def _server(args) -> int:
    from controlplane.app import serve
    from mixprec.transport import server_credentials

    configure_logging(args.log_level)
    credentials = server_credentials(args.tls_cert, args.tls_key, args.client_ca)
    limits = given_limits(args, "max_streams_per_token", "max_worker_ids_per_token", "max_reports_per_token",
                       "max_reports_per_worker")
    resolutions = given_limits(args, "max_resolutions_per_token")
    asyncio.run(serve(args.db, args.listen, args.metrics_port, args.redis, auth=args.auth, stream_limits=limits,
                      resolution_limits={"per_token": resolutions["max_resolutions_per_token"]} if resolutions else None,
                      webhook_allow=args.webhook_allow,
                      tls_credentials=credentials, metrics_listen=args.metrics_listen, health_listen=args.health_listen,
                      http_listen=args.http_listen, http_tls=(args.tls_cert, args.tls_key) if args.tls_cert else None))
    return 0


def _migrate(args) -> int:
    from controlplane.storage.database import open_engine, upgrade

    engine = open_engine(args.db)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"database already at revision {after}")
    else:
        print(f"migrated database from {before or 'empty'} to revision {after}")
    return 0
