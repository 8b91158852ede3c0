"""Jobs by owner and phase (with their ids, so that the index alone answers): an owner's
jobs that have not ended are counted from the index, however many ended jobs the owner has
and however many other owners' jobs have not ended (the service's per-user limit, checked
on every job creation).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_phase", "jobs", ["owner", "phase", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_phase", table_name="jobs")
