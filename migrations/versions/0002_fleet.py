"""Activation history, worker agents' state and their reports.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous_version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("rolled_back", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_activations_endpoint_id", "activations", ["endpoint_id"])
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("connected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("replica", sa.String(64), nullable=False, server_default=""),
        sa.Column("applied_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_ack_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_nack_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_nack_error", sa.Text, nullable=False, server_default=""),
        sa.Column("hardware", sa.JSON, nullable=False),
        sa.Column("inference_address", sa.String(200), nullable=False, server_default=""),
        sa.Column("last_quality", sa.JSON, nullable=False),
        sa.Column("last_serving", sa.JSON, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("endpoint_id", "worker_id", name="uq_workers_endpoint_worker"),
    )
    op.create_index("ix_workers_endpoint_id", "workers", ["endpoint_id"])
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("endpoint_id", sa.Integer, sa.ForeignKey("endpoints.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("worker_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reports_endpoint_version", "reports", ["endpoint_id", "version", "at"])


def downgrade() -> None:
    op.drop_index("ix_reports_endpoint_version", "reports")
    op.drop_table("reports")
    op.drop_index("ix_workers_endpoint_id", "workers")
    op.drop_table("workers")
    op.drop_index("ix_activations_endpoint_id", "activations")
    op.drop_table("activations")
