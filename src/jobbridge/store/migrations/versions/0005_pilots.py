"""Pilot jobs: pilot job services and their pilots (each an ordinary job), work unit
services, the pilot job services each one uses, and the work units with their states.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from jobbridge.store.schema import JSONDocument, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pilot_services",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("created", UTCDateTime, nullable=False),
    )
    op.create_table(
        "pilots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("service_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("rm", sa.String(512), nullable=False),
        sa.Column("backend", sa.String(128), nullable=False),
        sa.Column("description", JSONDocument, nullable=False),
        sa.Column("context", JSONDocument),
        sa.Column("nodes", sa.Integer, nullable=False),
        sa.Column("cores_per_node", sa.Integer, nullable=False),
        sa.Column("walltime", sa.Float),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_pilots_service", "pilots", ["service_id"])
    op.create_index("ix_pilots_done", "pilots", ["done"])
    op.create_table(
        "work_unit_services",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("retries", sa.Integer, nullable=False),
        sa.Column("pool", sa.String(128)),
        sa.Column("created", UTCDateTime, nullable=False),
    )
    op.create_table(
        "work_unit_service_pilot_services",
        sa.Column("unit_service_id", sa.String(32), primary_key=True),
        sa.Column("pilot_service_id", sa.String(32), primary_key=True),
    )
    op.create_table(
        "work_units",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("service_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("description", JSONDocument, nullable=False),
        sa.Column("cores", sa.Integer, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("exit_code", sa.Integer),
        sa.Column("pilot_id", sa.String(32)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retried", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created", UTCDateTime, nullable=False),
        sa.Column("started", UTCDateTime),
        sa.Column("ended", UTCDateTime),
    )
    op.create_index("ix_work_units_service_seq", "work_units", ["service_id", "seq"])
    op.create_index("ix_work_units_phase", "work_units", ["phase"])


def downgrade() -> None:
    op.drop_index("ix_work_units_phase", "work_units")
    op.drop_index("ix_work_units_service_seq", "work_units")
    op.drop_table("work_units")
    op.drop_table("work_unit_service_pilot_services")
    op.drop_table("work_unit_services")
    op.drop_index("ix_pilots_done", "pilots")
    op.drop_index("ix_pilots_service", "pilots")
    op.drop_table("pilots")
    op.drop_table("pilot_services")
