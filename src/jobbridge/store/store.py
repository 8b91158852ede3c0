"""Jobs and their events in SQL: SQLite embedded by default, PostgreSQL for shared services."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobbridge.errors import JobNotFoundError
from jobbridge.job import Event, Handover, Job, utcnow
from jobbridge.phase import ACTIVE_PHASES, Phase
from jobbridge.spec import JobSpec
from jobbridge.store.connection import (
    WRITE_OPTION,
    ChangeWatch,
    alembic_config,
    create_engine,
    head_revision,
    write_turns,
)
from jobbridge.store.schema import dependencies, events, jobs, leases

if TYPE_CHECKING:
    from jobbridge.store.batch import Change

__all__ = ["JOB_CHANNEL", "Store"]

JOB_CHANNEL = "jobbridge_jobs"
"""On PostgreSQL, every phase change and deletion of a job is announced on this channel
(``NOTIFY``; the payload is the job id and its new phase, or ``DELETED``, separated by a
space), in the transaction that makes it: listeners hear of it once it is committed, and only
then."""

_MIGRATION_LOCK = 0x6A6F6262  # any constant shared by every jobbridge process
_JOB_FIELDS = frozenset(jobs.c.keys()) - {"id", "spec", "name", "version"}
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


class Store:
    """Durable record of every job. Safe to share between threads and processes."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self._engine = create_engine(url)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._write_turns = write_turns(self._engine)
        self._parsed: dict[str, tuple[int, Job]] = {}
        self._specs: dict[str, tuple[Any, JobSpec]] = {}
        self._watch = ChangeWatch(self._engine)
        self._listings: dict[str, tuple[int, list[tuple[str, int]]]] = {}
        if migrate:
            self.migrate()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

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

    def _job(self, row: sa.Row[Any]) -> Job:
        """The job a row holds. A row whose version this store has parsed before is not
        parsed again; the data comes from the store's own writes of validated jobs, so it is
        taken as it is, except the spec, which is validated once per job and content."""
        seen = self._parsed.get(row.id)
        if seen is not None and seen[0] == row.version:
            return seen[1]
        data = row._asdict()
        for internal in _INTERNAL:
            data.pop(internal, None)
        raw = data["spec"]
        known = self._specs.get(row.id)
        if known is not None and known[0] == raw:
            data["spec"] = known[1]
        else:
            data["spec"] = JobSpec.model_validate(raw)
            self._specs[row.id] = (raw, data["spec"])
        data["phase"] = Phase(data["phase"])
        data["handover"] = Handover(data["handover"])
        job = Job.model_construct(_SET_FIELDS, **data)
        if len(self._parsed) >= _PARSED_LIMIT:
            self._parsed.clear()
            self._specs.clear()
        self._parsed[row.id] = (row.version, job)
        return job

    def _changed(self, conn: sa.Connection, job_id: str, update: sa.Update) -> Job | None:
        """Run an update of the job's row; the job as it is now, or None if no row matched."""
        if self._engine.dialect.update_returning:
            row = conn.execute(update.returning(*jobs.c)).first()
            return None if row is None else self._job(row)
        if conn.execute(update).rowcount != 1:
            return None
        return self._fetch(conn, job_id)

    def _fetch(self, conn: sa.Connection, job_id: str) -> Job:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFoundError(job_id)
        return self._job(row)

    # -- writing -----------------------------------------------------------------------------

    def add(
        self,
        new_jobs: Sequence[Job],
        *,
        claimed: Iterable[str] = (),
        token: str | None = None,
        also: Callable[[sa.Connection], object] | None = None,
    ) -> None:
        """Record new jobs and their first event in one transaction. Jobs named in
        ``claimed`` are recorded as claimed for submission under ``token`` already (see
        ``claim``). ``also`` writes more rows in the same transaction (a service's own
        record of the jobs), so that a crash leaves all of them or none."""
        if not new_jobs:
            return
        claimed = set(claimed)
        now = utcnow()
        rows = []
        for job in new_jobs:
            row = {
                **_job_row(job),
                "claim_token": None,
                "heartbeat": None,
                "submitting_since": None,
            }
            if job.id in claimed:
                row.update(_claim_values(token, now), attempts=1)
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
                [_event_row(job.id, job.created, None, job.phase) for job in new_jobs],
            )
            if also is not None:
                also(conn)

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
        _check_fields(fields)
        time = time or utcnow()
        guard = [jobs.c.id == job_id, jobs.c.phase == expected.value]
        if token is not None:
            guard.append(jobs.c.claim_token == token)
        with self.writing() as conn:
            moved = self._changed(
                conn, job_id, _changing().where(*guard).values(phase=new.value, **fields)
            )
            if moved is None:
                return None
            conn.execute(
                events.insert(),
                _event_row(
                    job_id, time, expected, new, fields.get("detail"), fields.get("message")
                ),
            )
            self._announce(conn, job_id, new.value)
            return moved

    def move_many(self, changes: Sequence[Change]) -> dict[str, Job]:
        """Apply many jobs' changes in one transaction, each only if its job is still as it
        expects (see ``batch``); the changed jobs by id."""
        from jobbridge.store.batch import apply_changes

        return apply_changes(self, changes)

    def update(self, job_id: str, **fields: Any) -> Job:
        """Change fields other than the phase."""
        _check_fields(fields)
        if "phase" in fields:
            raise ValueError("use move() to change a phase")
        with self.writing() as conn:
            updated = self._changed(
                conn, job_id, _changing().where(jobs.c.id == job_id).values(**fields)
            )
            if updated is None:
                raise JobNotFoundError(job_id)
            return updated

    # -- handing over, fenced ----------------------------------------------------------------

    def claim(self, job_id: str, token: str) -> bool:
        """Take the right to hand a waiting job to its backend; only one caller wins."""
        now = utcnow()
        with self.writing() as conn:
            done = conn.execute(
                _changing()
                .where(
                    jobs.c.id == job_id,
                    jobs.c.phase == Phase.QUEUED.value,
                    jobs.c.handover == Handover.WAITING.value,
                    jobs.c.native_id.is_(None),
                    sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
                )
                .values(**_claim_values(token, now), attempts=jobs.c.attempts + 1)
            )
            return done.rowcount == 1

    def beat(self, token: str, job_ids: Sequence[str]) -> None:
        """Show that the process holding ``token`` still works on these claims."""
        if not job_ids:
            return
        with self.writing() as conn:
            for chunk in _chunks(job_ids, 500):
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id.in_(chunk),
                        jobs.c.claim_token == token,
                        jobs.c.handover == Handover.CLAIMED.value,
                    )
                    .values(heartbeat=utcnow())
                )

    def finish_claim(self, job_id: str, token: str, native_id: str) -> Job | None:
        """Record the native id a claimed submission got, if the claim still holds (it may
        have been judged dead meanwhile, and then only ``adopt`` may take the answer)."""
        return self._set_handover(
            job_id,
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value],
            native_id=native_id,
            handover=Handover.SUBMITTED.value,
            claim_token=None,
            submitting_since=None,
            not_before=None,
        )

    def finish_claims(self, answers: Mapping[str, tuple[str, str]]) -> dict[str, Job]:
        """``finish_claim`` for many jobs in one transaction: job id -> (the token it was
        claimed under, the native id it got). The jobs whose claim still held, by id."""
        from jobbridge.store.batch import finish_claims

        return finish_claims(self, answers)

    def adopt(self, job_id: str, native_id: str) -> Job | None:
        """Take a native id found for a submission whose outcome was unknown."""
        return self._set_handover(
            job_id,
            [jobs.c.handover.in_([Handover.UNCERTAIN.value, Handover.WAITING.value])],
            native_id=native_id,
            handover=Handover.SUBMITTED.value,
            claim_token=None,
            submitting_since=None,
            not_before=None,
        )

    def make_uncertain(
        self, job_id: str, token: str, not_before: datetime, message: str
    ) -> Job | None:
        """A claimed submission got no answer: it may have created a native job."""
        return self._set_handover(
            job_id,
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value],
            handover=Handover.UNCERTAIN.value,
            not_before=not_before,
            message=message,
        )

    def expire_claims(self, backend: str, before: datetime, not_before: datetime) -> int:
        """Claims of this backend whose heartbeat stopped before ``before``: their process is
        gone, so what it did is unknown. Returns how many there were."""
        stale = (
            jobs.c.backend == backend,
            jobs.c.handover == Handover.CLAIMED.value,
            jobs.c.native_id.is_(None),
            sa.or_(jobs.c.heartbeat.is_(None), jobs.c.heartbeat < before),
        )
        with self.reading() as conn:  # most cycles find none: no write transaction then
            if conn.execute(sa.select(jobs.c.id).where(*stale).limit(1)).first() is None:
                return 0
        with self.writing() as conn:
            done = conn.execute(
                _changing()
                .where(*stale)
                .values(
                    handover=Handover.UNCERTAIN.value,
                    not_before=not_before,
                    message="the process submitting it stopped showing life; looking for it",
                )
            )
            return int(done.rowcount)

    def retry_later(
        self, job_id: str, not_before: datetime, message: str, *, token: str | None = None
    ) -> Job | None:
        """Give a claimed (``token``) or uncertain submission back to waiting, not to be
        tried again before ``not_before``."""
        guard = (
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value]
            if token is not None
            else [jobs.c.handover == Handover.UNCERTAIN.value]
        )
        return self._set_handover(
            job_id,
            [*guard, jobs.c.native_id.is_(None)],
            handover=Handover.WAITING.value,
            claim_token=None,
            submitting_since=None,
            not_before=not_before,
            message=message,
        )

    def settle_unsubmitted(self, job_id: str) -> None:
        """An ended job whose uncertain submission created nothing: nothing to look for."""
        self._set_handover(
            job_id,
            [jobs.c.handover == Handover.UNCERTAIN.value, jobs.c.native_id.is_(None)],
            handover=Handover.WAITING.value,
            claim_token=None,
            submitting_since=None,
        )

    def _set_handover(
        self, job_id: str, guard: list[sa.ColumnElement[bool]], **values: Any
    ) -> Job | None:
        with self.writing() as conn:
            return self._changed(
                conn, job_id, _changing().where(jobs.c.id == job_id, *guard).values(**values)
            )

    def waiting(self, backend: str, now: datetime) -> list[Job]:
        """Jobs queued in jobbridge for this backend that may be handed over now."""
        query = (
            sa.select(jobs)
            .where(
                jobs.c.backend == backend,
                jobs.c.phase == Phase.QUEUED.value,
                jobs.c.handover == Handover.WAITING.value,
                jobs.c.native_id.is_(None),
                sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
            )
            .order_by(jobs.c.created, jobs.c.id)
        )
        with self.reading() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def uncertain(self, backend: str) -> list[tuple[Job, datetime | None]]:
        """Jobs whose submission may or may not have created a native job, in any phase,
        each with the time before which the backend's not knowing it proves nothing."""
        query = sa.select(jobs).where(
            jobs.c.backend == backend, jobs.c.handover == Handover.UNCERTAIN.value
        )
        with self.reading() as conn:
            return [(self._job(row), row.not_before) for row in conn.execute(query)]

    def note(self, job_id: str, phase: Phase, detail: str, message: str) -> None:
        """Record something that happened to a job without changing its phase (an event
        whose old and new phase are the same)."""
        with self.writing() as conn:
            conn.execute(
                events.insert(), _event_row(job_id, utcnow(), phase, phase, detail, message)
            )

    # -- jobs the backend cannot find ----------------------------------------------------------

    def count_misses(self, job_ids: Sequence[str], now: datetime) -> None:
        """One more status query found these jobs nowhere."""
        with self.writing() as conn:
            for chunk in _chunks(job_ids, 500):
                conn.execute(
                    _changing()
                    .where(jobs.c.id.in_(chunk))
                    .values(
                        misses=jobs.c.misses + 1,
                        missing_since=sa.func.coalesce(jobs.c.missing_since, now),
                    )
                )

    def clear_misses(self, job_ids: Sequence[str]) -> None:
        """These jobs were found again."""
        with self.writing() as conn:
            for chunk in _chunks(job_ids, 500):
                conn.execute(
                    _changing()
                    .where(jobs.c.id.in_(chunk), jobs.c.misses > 0)
                    .values(misses=0, missing_since=None)
                )

    def delete(self, job_id: str) -> None:
        self._parsed.pop(job_id, None)
        self._specs.pop(job_id, None)
        with self.writing() as conn:
            conn.execute(events.delete().where(events.c.job_id == job_id))
            conn.execute(dependencies.delete().where(dependencies.c.job_id == job_id))
            if conn.execute(jobs.delete().where(jobs.c.id == job_id)).rowcount != 1:
                raise JobNotFoundError(job_id)
            self._announce(conn, job_id, "DELETED")

    def _announce(self, conn: sa.Connection, job_id: str, phase: str) -> None:
        """Tell the listeners of ``JOB_CHANNEL`` once this transaction commits."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(JOB_CHANNEL, f"{job_id} {phase}")))

    # -- leases --------------------------------------------------------------------------------

    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` if it is free, has expired or is
        ``holder``'s already (then this renews it): a compare-and-set, so that of several
        callers at most one holds it. True if ``holder`` holds it now. On PostgreSQL the
        database's clock is the only one that counts, so the processes' clocks may differ."""
        now, until = self._lease_times(seconds)
        with self.writing() as conn:
            renewed = conn.execute(
                leases.update()
                .where(
                    leases.c.name == name,
                    sa.or_(leases.c.holder == holder, leases.c.expires < now),
                )
                .values(holder=holder, expires=until)
            )
            if renewed.rowcount == 1:
                return True
            taken = conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first()
            if taken is not None:
                return False
        try:
            with self.writing() as conn:
                conn.execute(leases.insert().values(name=name, holder=holder, expires=until))
        except sa.exc.IntegrityError:
            return False  # another caller created it first
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once, if ``holder`` has it, for another process to take."""
        with self.writing() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def leases(self) -> dict[str, tuple[str, datetime]]:
        """Every lease: its holder and when it expires unless renewed."""
        with self.reading() as conn:
            rows = conn.execute(sa.select(leases))
            return {row.name: (row.holder, row.expires) for row in rows}

    def _lease_times(self, seconds: float) -> tuple[Any, Any]:
        now: Any = sa.func.clock_timestamp() if self.dialect == "postgresql" else utcnow()
        return now, now + timedelta(seconds=seconds)

    # -- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.reading() as conn:
            return self._fetch(conn, job_id)

    def get_many(self, job_ids: Iterable[str]) -> list[Job]:
        wanted = list(dict.fromkeys(job_ids))
        found: dict[str, Job] = {}
        with self.reading() as conn:
            for chunk in _chunks(wanted, 500):
                rows = conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk)))
                found.update((row.id, self._job(row)) for row in rows)
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
        submitted: bool | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        workflow: str | None = None,
    ) -> list[Job]:
        query = sa.select(jobs)
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

    def handed_over(self, backend: str) -> list[Job]:
        """The active jobs that this backend holds (with a native id), oldest first. Only
        ids and versions are read for all; whole rows only where the version changed since
        this store last parsed them, so an unchanged job costs neither parsing nor validation.
        On SQLite, when nothing at all was committed since the last listing, not even the
        ids are read again."""
        listing = (
            sa.select(jobs.c.id, jobs.c.version)
            .where(
                jobs.c.backend == backend,
                jobs.c.phase.in_([p.value for p in ACTIVE_PHASES]),
                jobs.c.native_id.is_not(None),
            )
            .order_by(jobs.c.created, jobs.c.id)
        )
        found: dict[str, Job] = {}
        moment = self._watch.version()  # before the listing: a later commit shows next time
        with self.reading() as conn:
            known = self._listings.get(backend)
            if moment is not None and known is not None and known[0] == moment:
                listed = known[1]  # nothing was committed since: the same jobs, unchanged
            else:
                listed = [(job_id, version) for job_id, version in conn.execute(listing)]
                if moment is not None:
                    self._listings[backend] = (moment, listed)
            stale = []
            for job_id, version in listed:
                seen = self._parsed.get(job_id)
                if seen is not None and seen[0] == version:
                    found[job_id] = seen[1]
                else:
                    stale.append(job_id)
            for chunk in _chunks(stale, 500):
                for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk))):
                    found[row.id] = self._job(row)
        return [found[job_id] for job_id, _ in listed if job_id in found]

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
                _changing()
                .where(jobs.c.id == job_id, jobs.c.phase == phase.value)
                .values(spec=_spec_document(spec), name=spec.display_name)
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
            return self._fetch(conn, job_id)

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
            for chunk in _chunks(parent_ids, 500):
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


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - _JOB_FIELDS
    if unknown:
        raise ValueError(f"not job fields: {sorted(unknown)}")
    for key in ("phase", "handover"):
        if key in fields and isinstance(fields[key], Phase | Handover):
            fields[key] = fields[key].value


def _claim_values(token: str | None, now: datetime) -> dict[str, Any]:
    return {
        "handover": Handover.CLAIMED.value,
        "claim_token": token,
        "heartbeat": now,
        "submitting_since": now,
    }


def _job_row(job: Job) -> dict[str, Any]:
    row = job.model_dump(exclude={"spec"})
    row["phase"] = job.phase.value
    row["handover"] = job.handover.value
    row["name"] = job.name
    row["workflow"] = job.spec.workflow
    row["spec"] = _spec_document(job.spec)
    return row


def _spec_document(spec: JobSpec) -> dict[str, Any]:
    """What the store keeps of a spec: the fields that differ from their defaults (a quarter
    of the whole, to read and to hold in memory; the same spec when validated again)."""
    return spec.model_dump(mode="json", exclude_defaults=True)


def _changing() -> sa.Update:
    """An update of job rows that raises their version, so that readers parse them anew."""
    return jobs.update().values(version=jobs.c.version + 1)


def _event_row(
    job_id: str,
    time: datetime,
    old: Phase | None,
    new: Phase,
    detail: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "time": time,
        "old_phase": None if old is None else old.value,
        "new_phase": new.value,
        "detail": detail,
        "message": message,
    }


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
