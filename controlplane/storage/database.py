"""Opening a database: engine options per dialect, and the schema check at start-up."""

from __future__ import annotations

import logging
import pathlib

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

import migrations
from controlplane.storage.write_requests import current_scope
from mixprec.errors import FailedPrecondition, FieldError, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///mixprec.db"
SUPPORTED = ("sqlite", "postgresql")


def open_engine(url: str) -> Engine:
    """An Engine for a SQLite file or Postgres (psycopg 3); bad URLs are InvalidArgument."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidArgument(FieldError("db", f"{url!r} is not a database URL, e.g. {DEFAULT_DB_URL}")) from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise InvalidArgument(
            FieldError("db", f"{url!r}: backend {backend!r} is not supported; use sqlite:///FILE or postgresql+psycopg://")
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed)
        return _postgres_engine(parsed)
    except NoSuchModuleError:
        raise InvalidArgument(FieldError("db", f"{url!r}: no driver {parsed.drivername!r} is installed")) from None


def _sqlite_engine(url) -> Engine:
    if url.database in (None, "", ":memory:"):
        raise InvalidArgument(FieldError("db", "an in-memory SQLite database would lose everything; give a file"))
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # A write RPC waits for the lock no longer than its caller waits for the answer.
        remaining = _remaining_ms()
        connection.exec_driver_sql(f"PRAGMA busy_timeout={min(remaining, 30000) if remaining else 30000}")
        # Take the write lock up front: a read-then-write transaction in WAL mode would otherwise
        # fail with SQLITE_BUSY instead of waiting its turn, and concurrent policy writers must queue.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url) -> Engine:
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                              connect_args={"connect_timeout": 5})

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # A write RPC's statements and lock waits end when its caller stops waiting.
        remaining = _remaining_ms()
        if remaining:
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {remaining}")
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {remaining}")

    return engine


def _remaining_ms() -> int | None:
    scope = current_scope.get()
    return scope.remaining_ms() if scope is not None else None


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(pathlib.Path(migrations.__file__).parent))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise Unavailable(f"database unreachable: {_first_line(exc)}") from None


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate to the newest schema; returns (revision before, revision after)."""
    before = current_revision(engine)
    cfg = _alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except DBAPIError as exc:
        raise Unavailable(f"database unreachable: {_first_line(exc)}") from None
    return before, head_revision()


def ensure_schema(engine: Engine) -> None:
    """Start-up check: an embedded SQLite file migrates itself, any other database must be current."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if engine.dialect.name == "sqlite":
        log.info("migrating %s from %s to %s", engine.url.render_as_string(), current or "empty", head)
        upgrade(engine)
        return
    raise FailedPrecondition(
        f"database schema is at revision {current or 'none (empty database)'} but this server needs {head}; "
        f"run `mixprec migrate --db {engine.url.render_as_string(hide_password=True)}` first"
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
