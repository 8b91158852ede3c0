"""Workflows and their workspaces, the job cache, users' secrets.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("workflow", sa.String(128)))
        batch.add_column(sa.Column("cache_key", sa.String(64)))
        batch.add_column(sa.Column("cached_from", sa.String(32)))
        batch.create_index("ix_jobs_workflow", ["workflow"])
        batch.create_index("ix_jobs_cache_key", ["cache_key"])
    op.create_table(
        "workflows",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("workspace", sa.Text),
        sa.Column("cache", sa.Boolean, nullable=False),
        sa.Column("created", UTCDateTime, nullable=False),
    )
    op.create_table(
        "secrets",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("secrets")
    op.drop_table("workflows")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_cache_key")
        batch.drop_index("ix_jobs_workflow")
        batch.drop_column("cached_from")
        batch.drop_column("cache_key")
        batch.drop_column("workflow")
