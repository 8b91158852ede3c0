"""Jobs and their phase-change events.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from jobbridge.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("backend", sa.String(128), nullable=False),
        sa.Column("native_id", sa.String(256)),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("exit_code", sa.Integer),
        sa.Column("spec", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("array_id", sa.String(32)),
        sa.Column("array_index", sa.Integer),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("queued", UTCDateTime),
        sa.Column("started", UTCDateTime),
        sa.Column("ended", UTCDateTime),
        sa.Column("destruction", UTCDateTime),
        sa.Column("submitting_since", UTCDateTime),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created"])
    op.create_index("ix_jobs_phase_created", "jobs", ["phase", "created"])
    op.create_index("ix_jobs_created", "jobs", ["created"])
    op.create_index("ix_jobs_backend_phase", "jobs", ["backend", "phase"])
    op.create_index("ix_jobs_array", "jobs", ["array_id", "array_index"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("old_phase", sa.String(16)),
        sa.Column("new_phase", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(64)),
        sa.Column("message", sa.Text),
    )
    op.create_index("ix_events_job_time", "events", ["job_id", "time"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("jobs")
