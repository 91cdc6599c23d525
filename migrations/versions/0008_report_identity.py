"""Reports carry the worker's id of the measurement: a report resent after a lost ACK is stored once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("report_id", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_reports_worker_report", ["endpoint_id", "worker_id", "report_id"])


def downgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.drop_constraint("uq_reports_worker_report", type_="unique")
        batch.drop_column("report_id")
