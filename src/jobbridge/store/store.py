"""Jobs and their events in SQL: SQLite embedded by default, PostgreSQL for shared services.

``Store`` is the one record of every job: it adds, moves, updates, finds and deletes jobs
here; handing over (``claims``) and what polling keeps (``polling``) are in companions of
their own, on the same foundation (``core``: connections, migrations, rows parsed once)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.errors import JobNotFoundError
from jobbridge.job import Event, Handover, Job, utcnow
from jobbridge.phase import ACTIVE_PHASES, Phase
from jobbridge.spec import JobSpec
from jobbridge.store.batch import Change, apply_changes
from jobbridge.store.claims import Handovers
from jobbridge.store.core import JOB_CHANNEL, with_columns
from jobbridge.store.polling import Polling
from jobbridge.store.rows import (
    changing,
    check_fields,
    chunks,
    claim_values,
    event_row,
    job_row,
    spec_document,
)
from jobbridge.store.schema import dependencies, events, jobs

__all__ = ["JOB_CHANNEL", "Store"]


class Store(Handovers, Polling):
    """Durable record of every job. Safe to share between threads and processes."""

    # -- writing -----------------------------------------------------------------------------

    def add(
        self,
        new_jobs: Sequence[Job],
        *,
        claimed: Iterable[str] = (),
        token: str | None = None,
        also: Callable[[sa.Connection, Sequence[Job]], object] | None = None,
    ) -> None:
        """Record new jobs and their first event in one transaction. Jobs named in
        ``claimed`` are recorded as claimed for submission under ``token`` already (see
        ``claim``). ``also``, called with the transaction and the jobs, writes more rows in
        it (a service's own record of the jobs), so that a crash leaves all of them or
        none."""
        if not new_jobs:
            return
        claimed = set(claimed)
        now = utcnow()
        claimed_values = {**claim_values(token, now), "attempts": 1}
        rows = []
        for job in new_jobs:
            row = {
                **job_row(job),
                "claim_token": None,
                "heartbeat": None,
                "submitting_since": None,
            }
            if job.id in claimed:
                row.update(claimed_values)
            rows.append(row)
        links = {
            (job.id, dependency.job_id, dependency.condition)
            for job in new_jobs
            for dependency in job.spec.depends_on
        }
        with self.writing() as conn:
            conn.execute(jobs.insert(), rows)
            if links:
                conn.execute(
                    dependencies.insert(),
                    [{"job_id": j, "parent_id": p, "condition": c} for j, p, c in sorted(links)],
                )
            conn.execute(
                events.insert(),
                [event_row(job.id, job.created, None, job.phase) for job in new_jobs],
            )
            if also is not None:
                also(conn, new_jobs)
        for job in new_jobs:  # committed: their rows say what they do, without a read
            values = claimed_values if job.id in claimed else {}
            self._remember(job.id, 0, with_columns(job, values))

    def move(
        self,
        job_id: str,
        expected: Phase,
        new: Phase,
        *,
        time: datetime | None = None,
        token: str | None = None,
        **fields: Any,
    ) -> Job | None:
        """Change a job's phase if it is still ``expected`` (and, given a ``token``, still
        claimed under it); record the event. None if not."""
        expected.check_move_to(new)
        check_fields(fields)
        time = time or utcnow()
        guard = [jobs.c.id == job_id, jobs.c.phase == expected.value]
        if token is not None:
            guard.append(jobs.c.claim_token == token)
        with self.writing() as conn:
            moved = self._changed(
                conn, job_id, changing().where(*guard).values(phase=new.value, **fields)
            )
            if moved is None:
                return None
            conn.execute(
                events.insert(),
                event_row(job_id, time, expected, new, fields.get("detail"), fields.get("message")),
            )
            self._announce(conn, job_id, new.value)
            return moved

    def move_many(self, changes: Sequence[Change]) -> dict[str, Job]:
        """Apply many jobs' changes in one transaction, each only if its job is still as it
        expects (see ``batch``); the changed jobs by id."""
        return apply_changes(self, changes)

    def update(self, job_id: str, **fields: Any) -> Job:
        """Change fields other than the phase."""
        check_fields(fields)
        if "phase" in fields:
            raise ValueError("use move() to change a phase")
        with self.writing() as conn:
            updated = self._changed(
                conn, job_id, changing().where(jobs.c.id == job_id).values(**fields)
            )
            if updated is None:
                raise JobNotFoundError(job_id)
            return updated

    def note(self, job_id: str, phase: Phase, detail: str, message: str) -> None:
        """Record something that happened to a job without changing its phase (an event
        whose old and new phase are the same)."""
        with self.writing() as conn:
            conn.execute(
                events.insert(), event_row(job_id, utcnow(), phase, phase, detail, message)
            )

    def delete(self, job_id: str) -> None:
        self._parsed.pop(job_id, None)
        with self.writing() as conn:
            conn.execute(events.delete().where(events.c.job_id == job_id))
            conn.execute(dependencies.delete().where(dependencies.c.job_id == job_id))
            if conn.execute(jobs.delete().where(jobs.c.id == job_id)).rowcount != 1:
                raise JobNotFoundError(job_id)
            self._announce(conn, job_id, "DELETED")

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.reading() as conn:
            return self._fetch(conn, job_id)

    def glance(self, job_ids: Iterable[str]) -> dict[str, tuple[str, Phase]]:
        """Each job's backend and phase, by id, read without making the jobs (what a caller
        waiting for them checks again and again)."""
        wanted = list(dict.fromkeys(job_ids))
        found: dict[str, tuple[str, Phase]] = {}
        with self.reading() as conn:
            for chunk in chunks(wanted):
                query = sa.select(jobs.c.id, jobs.c.backend, jobs.c.phase)
                for job_id, backend, phase in conn.execute(query.where(jobs.c.id.in_(chunk))):
                    found[job_id] = (backend, Phase(phase))
        missing = [job_id for job_id in wanted if job_id not in found]
        if missing:
            raise JobNotFoundError(missing[0])
        return found

    def get_many(self, job_ids: Iterable[str]) -> list[Job]:
        wanted = list(dict.fromkeys(job_ids))
        versions: dict[str, int] = {}
        with self.reading() as conn:
            for chunk in chunks(wanted):
                listing = sa.select(jobs.c.id, jobs.c.version).where(jobs.c.id.in_(chunk))
                versions.update((job_id, version) for job_id, version in conn.execute(listing))
            found = self._as_now(conn, versions)
        missing = [job_id for job_id in wanted if job_id not in found]
        if missing:
            raise JobNotFoundError(missing[0])
        return [found[job_id] for job_id in wanted]

    def find(
        self,
        *,
        owner: str | None = None,
        phases: Iterable[Phase] | None = None,
        backend: str | None = None,
        name: str | None = None,
        since: datetime | None = None,
        array_id: str | None = None,
        array_index: int | None = None,
        submitted: bool | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        workflow: str | None = None,
    ) -> list[Job]:
        query = sa.select(jobs)
        if array_index is not None:
            query = query.where(jobs.c.array_index == array_index)
        if workflow is not None:
            query = query.where(jobs.c.workflow == workflow)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if phases is not None:
            query = query.where(jobs.c.phase.in_([Phase(p).value for p in phases]))
        if backend is not None:
            query = query.where(jobs.c.backend == backend)
        if name is not None:
            query = query.where(jobs.c.name == name)
        if since is not None:
            query = query.where(jobs.c.created >= since)
        if array_id is not None:
            query = query.where(jobs.c.array_id == array_id)
        if submitted is not None:
            native = jobs.c.native_id
            query = query.where(native.is_not(None) if submitted else native.is_(None))
        order = (
            (jobs.c.created.desc(), jobs.c.id.desc())
            if newest_first
            else (jobs.c.created, jobs.c.id)
        )
        query = query.order_by(*order).limit(limit)
        with self.reading() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def active(self, backend: str | None = None) -> list[Job]:
        return self.find(phases=ACTIVE_PHASES, backend=backend, newest_first=False)

    def expired(self, now: datetime) -> list[Job]:
        """Jobs whose destruction time has passed."""
        query = sa.select(jobs).where(jobs.c.destruction < now).order_by(jobs.c.destruction)
        with self.reading() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def replace_spec(self, job_id: str, spec: JobSpec, phase: Phase) -> Job | None:
        """Give a job a new spec (and the dependencies it names) if it is still in ``phase``;
        None if it is not."""
        with self.writing() as conn:
            done = conn.execute(
                changing()
                .where(jobs.c.id == job_id, jobs.c.phase == phase.value)
                .values(spec=spec_document(spec), name=spec.display_name)
            )
            if done.rowcount != 1:
                return None
            conn.execute(dependencies.delete().where(dependencies.c.job_id == job_id))
            links = sorted({(d.job_id, d.condition) for d in spec.depends_on})
            if links:
                conn.execute(
                    dependencies.insert(),
                    [{"job_id": job_id, "parent_id": p, "condition": c} for p, c in links],
                )
            return self._fetch(conn, job_id, remember=False)

    def has_active(self, backend: str) -> bool:
        """Whether any job of the backend is active (waiting, being handed over or held)."""
        query = (
            sa.select(jobs.c.id)
            .where(jobs.c.backend == backend, jobs.c.phase.in_([p.value for p in ACTIVE_PHASES]))
            .limit(1)
        )
        with self.reading() as conn:
            return conn.execute(query).first() is not None

    def count_in_flight(self, backend: str, array_id: str | None = None) -> int:
        """Active jobs that the backend holds or is being handed."""
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(
                jobs.c.backend == backend,
                jobs.c.phase.in_([p.value for p in ACTIVE_PHASES]),
                jobs.c.handover != Handover.WAITING.value,
            )
        )
        if array_id is not None:
            query = query.where(jobs.c.array_id == array_id)
        with self.reading() as conn:
            return int(conn.execute(query).scalar_one())

    def dependents(self, parent_id: str) -> list[tuple[Job, str]]:
        """The jobs that depend on ``parent_id``, each with the condition it depends under."""
        query = (
            sa.select(jobs, dependencies.c.condition)
            .join(dependencies, dependencies.c.job_id == jobs.c.id)
            .where(dependencies.c.parent_id == parent_id)
            .order_by(jobs.c.created, jobs.c.id)
        )
        with self.reading() as conn:
            return [(self._job(row), row.condition) for row in conn.execute(query)]

    def having_dependents(self, parent_ids: Sequence[str]) -> set[str]:
        """Those of ``parent_ids`` that some job depends on."""
        found: set[str] = set()
        with self.reading() as conn:
            for chunk in chunks(parent_ids):
                query = sa.select(dependencies.c.parent_id).where(
                    dependencies.c.parent_id.in_(chunk)
                )
                found.update(conn.execute(query.distinct()).scalars())
        return found

    def events(self, job_id: str) -> list[Event]:
        query = (
            sa.select(events).where(events.c.job_id == job_id).order_by(events.c.time, events.c.id)
        )
        with self.reading() as conn:
            return [
                Event(
                    job_id=row.job_id,
                    time=row.time,
                    old_phase=None if row.old_phase is None else Phase(row.old_phase),
                    new_phase=Phase(row.new_phase),
                    detail=row.detail,
                    message=row.message,
                )
                for row in conn.execute(query)
            ]

    def backend_names(self) -> list[str]:
        """Every backend that some recorded job names."""
        with self.reading() as conn:
            return list(conn.execute(sa.select(jobs.c.backend).distinct()).scalars())

    def count(self) -> int:
        with self.reading() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one())
