"""Work units: a cancel asked for by a process that does not coordinate the pilots (a replica
of the service, say), for the coordinating one to carry out; and where a unit's stdout and
stderr are in the files its agent's worker shares among its units.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import JSONDocument

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "work_units",
        sa.Column("cancel_asked", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("work_units", sa.Column("output", JSONDocument))


def downgrade() -> None:
    with op.batch_alter_table("work_units") as batch:
        batch.drop_column("output")
        batch.drop_column("cancel_asked")
