"""Exactly-once hand-over: where a job's submission stands (waiting, claimed by a live
process with a heartbeat, of unknown outcome, submitted), the fencing token of the claim,
how often it was tried, when it may next be tried or judged, and how long the backend has
failed to find a submitted job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("handover", sa.String(16), nullable=False, server_default="WAITING")
        )
        batch.add_column(sa.Column("claim_token", sa.String(32)))
        batch.add_column(sa.Column("heartbeat", UTCDateTime))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", UTCDateTime))
        batch.add_column(sa.Column("missing_since", UTCDateTime))
        batch.add_column(sa.Column("misses", sa.Integer, nullable=False, server_default="0"))
    jobs = sa.table(
        "jobs",
        sa.column("native_id", sa.String),
        sa.column("submitting_since", UTCDateTime),
        sa.column("handover", sa.String),
        sa.column("attempts", sa.Integer),
    )
    bind = op.get_bind()
    bind.execute(
        jobs.update().where(jobs.c.native_id.is_not(None)).values(handover="SUBMITTED", attempts=1)
    )
    # a hand-over under way when the old version stopped: its outcome is unknown
    bind.execute(
        jobs.update()
        .where(jobs.c.native_id.is_(None), jobs.c.submitting_since.is_not(None))
        .values(handover="UNCERTAIN", attempts=1)
    )
    op.create_index("ix_jobs_backend_handover", "jobs", ["backend", "handover"])


def downgrade() -> None:
    op.drop_index("ix_jobs_backend_handover", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in (
            "misses", "missing_since", "not_before", "attempts", "heartbeat", "claim_token",
            "handover",
        ):  # fmt: skip
            batch.drop_column(column)
