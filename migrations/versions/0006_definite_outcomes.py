"""Write requests by idempotency key (answered once, refused at commit after their deadline), and a
rollout's requests for reports again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# A deferred constraint trigger runs at COMMIT: a write whose COMMIT reaches Postgres after the
# RPC's deadline (e.g. held up by a stalled network) fails there instead of taking effect late.
COMMIT_BEFORE_DEADLINE = """
CREATE FUNCTION mixprec_commit_before_deadline() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.deadline IS NOT NULL AND clock_timestamp() > NEW.deadline THEN
    RAISE EXCEPTION 'the request reached the database after its deadline; nothing was written'
      USING ERRCODE = '57014';
  END IF;
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "write_requests",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(100), nullable=False, unique=True),
        sa.Column("method", sa.String(100), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_write_requests_created_at", "write_requests", ["created_at"])
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("report_round", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("reports_asked_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(COMMIT_BEFORE_DEADLINE)
        op.execute("CREATE CONSTRAINT TRIGGER write_requests_commit_before_deadline AFTER INSERT ON write_requests "
                   "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION mixprec_commit_before_deadline()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER write_requests_commit_before_deadline ON write_requests")
        op.execute("DROP FUNCTION mixprec_commit_before_deadline()")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("reports_asked_at")
        batch.drop_column("report_round")
    op.drop_index("ix_write_requests_created_at", "write_requests")
    op.drop_table("write_requests")
