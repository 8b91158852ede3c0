"""The UWS service's own tables: job metadata (definition, runId, parameters, execution
duration, quote) keyed by job id, and users with hashed tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import JSONDocument, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uws_jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("definition", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("run_id", sa.String(256)),
        sa.Column("parameters", JSONDocument, nullable=False),
        sa.Column("execution_duration", sa.Integer, nullable=False),
        sa.Column("quote", UTCDateTime),
        sa.Column("created", UTCDateTime, nullable=False),
    )
    op.create_index("ix_uws_jobs_definition_created", "uws_jobs", ["definition", "created"])
    op.create_index(
        "ix_uws_jobs_owner_definition_created", "uws_jobs", ["owner", "definition", "created"]
    )
    op.create_table(
        "uws_users",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("created", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("uws_users")
    op.drop_index("ix_uws_jobs_owner_definition_created", "uws_jobs")
    op.drop_index("ix_uws_jobs_definition_created", "uws_jobs")
    op.drop_table("uws_jobs")
