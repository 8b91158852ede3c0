"""The store's foundation: connections, migrations, and jobs parsed from rows once per
version. What the store does with jobs is in ``store`` and its companions."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.errors import JobNotFoundError
from jobbridge.job import Handover, Job
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.store.connection import (
    WRITE_OPTION,
    ChangeWatch,
    WriteTurns,
    alembic_config,
    create_engine,
    head_revision,
    write_turns,
)
from jobbridge.store.rows import chunks
from jobbridge.store.schema import jobs

__all__ = ["JOB_CHANNEL", "StoreCore"]

JOB_CHANNEL = "jobbridge_jobs"
"""On PostgreSQL, every phase change and deletion of a job is announced on this channel
(``NOTIFY``; the payload is the job id and its new phase, or ``DELETED``, separated by a
space), in the transaction that makes it: listeners hear of it once it is committed, and only
then."""

_MIGRATION_LOCK = 0x6A6F6262  # any constant shared by every jobbridge process
_INTERNAL = (
    "name", "submitting_since", "claim_token", "heartbeat", "not_before", "version", "workflow",
    "cache_key",
)  # fmt: skip
"""Columns that the store keeps for its own bookkeeping, not part of a ``Job``."""
_SET_FIELDS = set(Job.model_fields)
"""Every field of a job read from a row is set: one set shared by all (frozen) jobs, where
a set of their own would cost each 2 KB."""
_PARSED_LIMIT = 100_000
"""Parsed rows kept at most; beyond it, the store starts afresh."""


def with_columns(job: Job, values: Mapping[str, Any]) -> Job:
    """The job as a row of it reads once ``values`` (columns, as written) are written to it."""
    data = dict(job.__dict__)
    for column, value in values.items():
        if column in _SET_FIELDS:
            data[column] = _as_field(column, value)
    return Job.model_construct(_SET_FIELDS, **data)


def _as_field(column: str, value: Any) -> Any:
    """A column's value as written, as the job's field holds it once read back."""
    if column == "phase":
        return Phase(value)
    if column == "handover":
        return Handover(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return value


class StoreCore:
    """Connections to one database and the jobs parsed from its rows."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self._engine = create_engine(url)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._write_turns = write_turns(self._engine)
        self._parsed: dict[str, tuple[int, Job]] = {}
        self._specs: dict[str, JobSpec] = {}
        self._watch = ChangeWatch(self._engine)
        self._listings: dict[str, tuple[int, list[tuple[str, int]]]] = {}
        if migrate:
            self.migrate()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def writes_in_turns(self) -> bool:
        """Whether this process writes one transaction at a time (SQLite): writers then
        gain nothing from threads of their own, and lose to the threads' contention."""
        return isinstance(self._write_turns, WriteTurns)

    def data_version(self) -> int | None:
        """A number that changes whenever anything is committed to the store, by any
        process; None where the database cannot tell (then assume that it changed)."""
        return self._watch.version()

    def close(self) -> None:
        self._watch.close()
        self._engine.dispose()

    def migrate(self) -> None:
        """Bring the schema to the newest revision; concurrent callers take turns."""
        if self._current_revision() == head_revision():
            return
        from alembic import command  # only when the schema must change: it is slow to load

        with self._writer.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def _current_revision(self) -> str | None:
        version = sa.table("alembic_version", sa.column("version_num"))
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.select(version.c.version_num)).scalar()

    @contextmanager
    def writing(self) -> Iterator[sa.Connection]:
        """A write transaction (on SQLite it takes the write lock up front)."""
        with self._write_turns, self._writer.begin() as conn:
            yield conn

    @contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            yield conn

    # -- parsing rows, once per version ---------------------------------------------------------

    def _job(self, row: sa.Row[Any], *, remember: bool = True) -> Job:
        """The job a row holds. A row whose version this store has parsed before is not
        parsed again; the data comes from the store's own writes of validated jobs, so it is
        taken as it is, except the spec, which is validated once per content: jobs with the
        same spec (an array's members, a batch of one spec) share one. A row read inside a
        transaction that may yet fail is parsed without ``remember``."""
        seen = self._parsed.get(row.id)
        if seen is not None and seen[0] == row.version:
            return seen[1]
        data = row._asdict()
        for internal in _INTERNAL:
            data.pop(internal, None)
        data["spec"] = self._spec(data["spec"])
        data["phase"] = Phase(data["phase"])
        data["handover"] = Handover(data["handover"])
        job = Job.model_construct(_SET_FIELDS, **data)
        if remember:
            self._remember(row.id, row.version, job)
        return job

    def _as_now(self, conn: sa.Connection, versions: Mapping[str, int]) -> dict[str, Job]:
        """The jobs whose rows are at these versions (or later), by id: whole rows are read
        only where this store has not parsed that version, so an unchanged job costs
        neither a row's reading nor its parsing."""
        found: dict[str, Job] = {}
        stale = []
        for job_id, version in versions.items():
            seen = self._parsed.get(job_id)
            if seen is not None and seen[0] == version:
                found[job_id] = seen[1]
            else:
                stale.append(job_id)
        for chunk in chunks(stale):
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk))):
                found[row.id] = self._job(row)
        return found

    def _remember(self, job_id: str, version: int, job: Job) -> None:
        if len(self._parsed) >= _PARSED_LIMIT:
            self._parsed.clear()
            self._specs.clear()
        self._parsed[job_id] = (version, job)

    def _updated(self, job_id: str, version: int, values: Mapping[str, Any]) -> Job | None:
        """The job once ``values`` (columns, as written) are written to its row at
        ``version``, built from its parse at that version instead of read back; None if this
        store has not parsed that version."""
        seen = self._parsed.get(job_id)
        if seen is None or seen[0] != version:
            return None
        return with_columns(seen[1], values)

    def _spec(self, document: dict[str, Any]) -> JobSpec:
        # keyed by its text, smaller to keep than the document itself
        key = json.dumps(document, sort_keys=True, separators=(",", ":"))
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = JobSpec.model_validate(document)
        return spec

    def _changed(self, conn: sa.Connection, job_id: str, update: sa.Update) -> Job | None:
        """Run an update of the job's row; the job as it is now, or None if no row matched
        (not kept: the transaction may yet fail)."""
        if self._engine.dialect.update_returning:
            row = conn.execute(update.returning(*jobs.c)).first()
            return None if row is None else self._job(row, remember=False)
        if conn.execute(update).rowcount != 1:
            return None
        return self._fetch(conn, job_id, remember=False)

    def _fetch(self, conn: sa.Connection, job_id: str, *, remember: bool = True) -> Job:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(job_id)
        return self._job(row, remember=remember)

    def _announce(self, conn: sa.Connection, job_id: str, phase: str) -> None:
        """Tell the listeners of ``JOB_CHANNEL`` once this transaction commits."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(JOB_CHANNEL, f"{job_id} {phase}")))
