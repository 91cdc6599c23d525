"""Request ids belong to their caller, method and endpoint, and remember the parameters of their call.

Ids kept before this revision belong to no caller: they answer no retry any more (they would
otherwise answer any caller), and they are forgotten within a day as before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# SQLite keeps the old column constraint unnamed: name it so that batch mode can drop it.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str:
    return "write_requests_request_id_key" if op.get_bind().dialect.name == "postgresql" else \
        "uq_write_requests_request_id"


def upgrade() -> None:
    with op.batch_alter_table("write_requests", naming_convention=_SQLITE_NAMES) as batch:
        batch.drop_constraint(_old_unique_name(), type_="unique")
        batch.add_column(sa.Column("caller", sa.String(100), nullable=False, server_default=""))
        batch.add_column(sa.Column("endpoint", sa.String(63), nullable=False, server_default=""))
        batch.add_column(sa.Column("fingerprint", sa.String(64), nullable=False, server_default=""))
        batch.create_unique_constraint("uq_write_requests_key", ["caller", "method", "endpoint", "request_id"])


def downgrade() -> None:
    op.execute("DELETE FROM write_requests")  # ids of different callers may share a value: none may stay
    with op.batch_alter_table("write_requests", naming_convention=_SQLITE_NAMES) as batch:
        batch.drop_constraint("uq_write_requests_key", type_="unique")
        batch.drop_column("fingerprint")
        batch.drop_column("endpoint")
        batch.drop_column("caller")
        batch.create_unique_constraint(_old_unique_name(), ["request_id"])
