"""The tables. Alembic migrations in ``migrations/`` create and evolve them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _JSONDocument(sa.types.TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL (whose dialect is loaded only where it is used)."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


JSONDocument = _JSONDocument()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("backend", sa.String(128), nullable=False),
    sa.Column("native_id", sa.String(256)),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("exit_code", sa.Integer),
    sa.Column("spec", JSONDocument, nullable=False),
    sa.Column("array_id", sa.String(32)),
    sa.Column("array_index", sa.Integer),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("queued", UTCDateTime),
    sa.Column("started", UTCDateTime),
    sa.Column("ended", UTCDateTime),
    sa.Column("destruction", UTCDateTime),
    sa.Column("submitting_since", UTCDateTime),
    sa.Column("handover", sa.String(16), nullable=False, server_default="WAITING"),
    sa.Column("claim_token", sa.String(32)),
    sa.Column("heartbeat", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", UTCDateTime),
    sa.Column("missing_since", UTCDateTime),
    sa.Column("misses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("workflow", sa.String(128)),
    sa.Column("cache_key", sa.String(64)),
    sa.Column("cached_from", sa.String(32)),
    sa.Index("ix_jobs_owner_created", "owner", "created"),
    sa.Index("ix_jobs_owner_phase", "owner", "phase", "id"),
    sa.Index("ix_jobs_phase_created", "phase", "created"),
    sa.Index("ix_jobs_created", "created"),
    sa.Index("ix_jobs_backend_phase", "backend", "phase"),
    sa.Index("ix_jobs_array", "array_id", "array_index"),
    sa.Index("ix_jobs_backend_handover", "backend", "handover"),
    sa.Index("ix_jobs_workflow", "workflow"),
    sa.Index("ix_jobs_cache_key", "cache_key"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("old_phase", sa.String(16)),
    sa.Column("new_phase", sa.String(16), nullable=False),
    sa.Column("detail", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Index("ix_events_job_time", "job_id", "time"),
)

dependencies = sa.Table(
    "dependencies",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("parent_id", sa.String(32), primary_key=True),
    sa.Column("condition", sa.String(16), primary_key=True),
    sa.Index("ix_dependencies_parent", "parent_id"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires", UTCDateTime, nullable=False),
)
"""Shared work that one process at a time does (polling a backend, destroying expired jobs):
who holds it, and until when unless renewed."""

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("workspace", sa.Text),
    sa.Column("cache", sa.Boolean, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
)
"""Workflows by owner ('' for none) and name: the shared workspace of their jobs, and
whether the job cache serves all of them."""

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
)
"""Users' secrets, each value encrypted (Fernet) with the configured key."""

# -- the UWS service's own data, keyed by job id ------------------------------------------------

uws_jobs = sa.Table(
    "uws_jobs",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("definition", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("run_id", sa.String(256)),
    sa.Column("parameters", JSONDocument, nullable=False),
    sa.Column("execution_duration", sa.Integer, nullable=False),
    sa.Column("quote", UTCDateTime),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Index("ix_uws_jobs_definition_created", "definition", "created"),
    sa.Index("ix_uws_jobs_owner_definition_created", "owner", "definition", "created"),
)

uws_users = sa.Table(
    "uws_users",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
)
