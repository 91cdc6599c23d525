"""Fixtures shared by every test: real databases, a real control plane on port 0."""

from __future__ import annotations

import os
import uuid

# No GPU here: Triton kernels run through Triton's interpreter, which must be chosen before Triton is
# first imported. Only tests that ask for the kernel path use it (worker.engine.kernels.dispatch).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import sqlalchemy as sa
from support import IN_CI, RunningControlPlane

from controlplane.storage.database import open_engine, upgrade

PG_ADMIN_URL = os.environ.get("MIXPREC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MIXPREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_missing(what: str, err: Exception):
    """In CI a missing service fails the run; on a laptop it skips with the reason."""
    message = f"{what} is not reachable ({err}); start it (see README) or set its URL"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class PostgresDatabases:
    """Creates a fresh database per test on the real server and drops it afterwards."""

    def __init__(self, admin_url: str):
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")

    def create(self) -> str:
        name = f"mixprec_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        name = sa.engine.make_url(url).database
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres() -> PostgresDatabases:
    databases = PostgresDatabases(PG_ADMIN_URL)
    try:
        with databases.admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as err:  # noqa: BLE001 - any failure means the service is not usable
        service_missing("PostgreSQL", err)
    yield databases
    databases.admin.dispose()


@pytest.fixture
def empty_pg_url(postgres):
    url = postgres.create()
    yield url
    postgres.drop(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A migrated, empty database: each test using it runs once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mixprec.db'}"
    else:
        url = request.getfixturevalue("empty_pg_url")
    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def control_plane(db_url):
    running = RunningControlPlane(db_url)
    yield running
    running.stop()


@pytest.fixture
def unused_address() -> str:
    from mixprec.localhost import free_port

    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as err:  # noqa: BLE001 - any failure means the service is not usable
        service_missing("Redis", err)
    finally:
        client.close()
    return REDIS_URL
