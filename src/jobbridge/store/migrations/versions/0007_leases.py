"""Leases: which of several processes on one store polls a backend, or destroys expired
jobs, and until when unless it renews its hold.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-13
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
