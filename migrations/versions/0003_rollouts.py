"""Progressive rollouts, at most one running or paused per endpoint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPEN = sa.text("state IN ('RUNNING', 'PAUSED')")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=False),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("guardrails", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_step", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_report_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("new_workers", sa.JSON, nullable=False),
        sa.Column("last_checks", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False, server_default=""),
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rollouts_endpoint_id", "rollouts", ["endpoint_id"])
    # The database itself refuses a second open rollout of an endpoint, whatever replica asks.
    op.create_index("uq_rollouts_one_open_per_endpoint", "rollouts", ["endpoint_id"], unique=True,
                    postgresql_where=OPEN, sqlite_where=OPEN)


def downgrade() -> None:
    op.drop_index("uq_rollouts_one_open_per_endpoint", "rollouts")
    op.drop_index("ix_rollouts_endpoint_id", "rollouts")
    op.drop_table("rollouts")
