"""Worker identity: agent tokens bound to one worker id, bootstrap tokens, and worker-id leases
shared by every replica.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_LIVE_BOUND = sa.text("revoked_at IS NULL AND worker_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(128), nullable=True))
        batch.add_column(sa.Column("bootstrap", sa.Boolean, nullable=False, server_default=sa.false()))
    # One live token per worker id: a bootstrap token issues it once, an admin mints it, never both.
    op.create_index("uq_tokens_live_worker", "tokens", ["endpoint", "worker_id"], unique=True,
                    postgresql_where=_LIVE_BOUND, sqlite_where=_LIVE_BOUND)
    op.create_table(
        "worker_leases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint", sa.String(63), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("token_id", sa.Integer, nullable=True),
        sa.Column("token_name", sa.String(63), nullable=False, server_default=""),
        sa.Column("replica", sa.String(64), nullable=False),
        sa.Column("stream", sa.String(32), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("endpoint", "worker_id", name="uq_worker_leases_endpoint_worker"),
    )
    op.create_index("ix_worker_leases_replica", "worker_leases", ["replica"])


def downgrade() -> None:
    op.drop_index("ix_worker_leases_replica", table_name="worker_leases")
    op.drop_table("worker_leases")
    op.drop_index("uq_tokens_live_worker", table_name="tokens")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("bootstrap")
        batch.drop_column("worker_id")
