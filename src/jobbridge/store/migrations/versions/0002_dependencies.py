"""Which job waits for which, to find a job's dependents without reading every spec.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dependencies = op.create_table(
        "dependencies",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("parent_id", sa.String(32), nullable=False),
        sa.Column("condition", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "parent_id", "condition"),
    )
    op.create_index("ix_dependencies_parent", "dependencies", ["parent_id"])
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    rows = {
        (job_id, dependency["job_id"], dependency.get("condition", "afterok"))
        for job_id, spec in op.get_bind().execute(sa.select(jobs.c.id, jobs.c.spec))
        for dependency in (spec or {}).get("depends_on", [])
    }
    if rows:
        op.bulk_insert(
            dependencies,
            [{"job_id": j, "parent_id": p, "condition": c} for j, p, c in sorted(rows)],
        )


def downgrade() -> None:
    op.drop_table("dependencies")
