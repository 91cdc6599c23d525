"""The migrations build exactly the schema the code declares, and step down and up again cleanly."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from controlplane.storage.database import _alembic_config, open_engine, upgrade
from controlplane.storage.tables import Base


def schema_drift(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        # Indexes (some partial) are declared in the migrations only; tables, columns and constraints in both.
        return [change for change in compare_metadata(context, Base.metadata)
                if not (isinstance(change, tuple) and change[0] == "remove_index")]


def test_head_matches_the_tables_and_downgrades_to_nothing_and_back(db_url):
    engine = open_engine(db_url)
    try:
        assert schema_drift(engine) == []
        config = _alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert schema_drift(engine) == []
    finally:
        engine.dispose()
