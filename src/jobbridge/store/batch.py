"""Many jobs' changes in one transaction: what a refresh or a batch of handovers found.

Each change is still a compare-and-set of its own job: it applies only if the job is still
in the phase it was seen in (and, for a claimed submission, still claimed under the same
token). In one write transaction the rows concerned are read and locked, the changes whose
guard holds are written with one statement per kind of change, each phase change gets its
event row, and on PostgreSQL each changed job is announced on ``JOB_CHANNEL``, all committed
together or not at all. One transaction instead of one per job is what lets a refresh of
many jobs, or a batch of local jobs, cost a fraction of a millisecond per job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.job import Handover, Job, utcnow
from jobbridge.phase import Phase
from jobbridge.store.core import JOB_CHANNEL, StoreCore
from jobbridge.store.rows import check_fields, chunks
from jobbridge.store.schema import events, jobs

__all__ = ["Change", "apply_changes", "finish_claims"]

_ATTEMPTS = 3
_DEADLOCK = "40P01"
_NOTIFY = sa.text(
    "SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"
)


@dataclass(frozen=True)
class Change:
    """One job's change: to ``new`` (an event is recorded and the job announced) or, if
    ``new`` is ``expected``, only of ``fields``. Applied only if the job is still
    ``expected``, and, given a ``token``, still claimed under it."""

    job_id: str
    expected: Phase
    new: Phase
    fields: Mapping[str, Any] = field(default_factory=dict)
    token: str | None = None
    time: datetime | None = None
    """When the phase changed (the event's time); now if not given."""


@dataclass(frozen=True)
class _Guarded:
    job_id: str
    guard: dict[str, Any]
    """Column -> the value it must still hold for the change to apply."""
    values: dict[str, Any]
    event: dict[str, Any] | None = None


def apply_changes(store: StoreCore, changes: Sequence[Change]) -> dict[str, Job]:
    """Apply the changes whose guard holds, in one transaction; the changed jobs as they
    are now, by id (a job left out had moved on meanwhile)."""
    now = utcnow()
    guarded = []
    for change in changes:
        fields = dict(change.fields)
        check_fields(fields)
        if "phase" in fields or "handover" in fields:
            raise ValueError("a change names its phase in new, and cannot change the handover")
        guard: dict[str, Any] = {"phase": change.expected.value}
        if change.token is not None:
            guard["claim_token"] = change.token
        event = None
        if change.new is not change.expected:
            change.expected.check_move_to(change.new)
            fields["phase"] = change.new.value
            event = {
                "job_id": change.job_id,
                "time": change.time or now,
                "old_phase": change.expected.value,
                "new_phase": change.new.value,
                "detail": fields.get("detail"),
                "message": fields.get("message"),
            }
        guarded.append(_Guarded(change.job_id, guard, fields, event))
    return _apply(store, guarded)


def finish_claims(store: StoreCore, answers: Mapping[str, tuple[str, str]]) -> dict[str, Job]:
    """Record the native ids that claimed submissions got (job id -> its claim's token, the
    native id), for the jobs still claimed under those tokens (see ``Store.finish_claim``);
    those jobs as they are now, by id."""
    return _apply(
        store,
        [
            _Guarded(
                job_id,
                {"claim_token": token, "handover": Handover.CLAIMED.value},
                {
                    "native_id": native_id,
                    "handover": Handover.SUBMITTED.value,
                    "claim_token": None,
                    "submitting_since": None,
                    "not_before": None,
                },
            )
            for job_id, (token, native_id) in answers.items()
        ],
    )


def _apply(store: StoreCore, changes: Sequence[_Guarded]) -> dict[str, Job]:
    if not changes:
        return {}
    by_id = {change.job_id: change for change in changes}
    if len(by_id) != len(changes):
        raise ValueError("one change per job in a batch")
    for attempt in range(_ATTEMPTS):
        try:
            return _apply_once(store, by_id)
        except sa.exc.OperationalError as error:
            # PostgreSQL ended the transaction to break a deadlock with a writer that locks
            # rows in another order (a heartbeat): nothing was written, so it may run again
            if _sqlstate(error) != _DEADLOCK or attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _apply_once(store: StoreCore, by_id: dict[str, _Guarded]) -> dict[str, Job]:
    guards = sorted({column for change in by_id.values() for column in change.guard})
    with store.writing() as conn:
        versions = {
            row.id: row.version
            for row in _locked(conn, list(by_id), guards)
            if all(getattr(row, column) == value for column, value in by_id[row.id].guard.items())
        }
        holding = [by_id[job_id] for job_id in versions]
        for same_kind in _kinds(holding):
            _update(conn, same_kind)
        # a job this store parsed at the version it locked is built, not read back
        changed: dict[str, tuple[int, Job]] = {}
        unread = []
        for change in holding:
            job = store._updated(change.job_id, versions[change.job_id], change.values)
            if job is None:
                unread.append(change.job_id)
            else:
                changed[change.job_id] = (versions[change.job_id] + 1, job)
        for chunk in chunks(unread):
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(chunk))):
                changed[row.id] = (row.version, store._job(row, remember=False))
        moved = [change.event for change in holding if change.event is not None]
        if moved:
            conn.execute(events.insert(), moved)
            _announce(store, conn, [(event["job_id"], event["new_phase"]) for event in moved])
    for job_id, (version, job) in changed.items():  # committed: safe to keep
        store._remember(job_id, version, job)
    return {job_id: job for job_id, (_, job) in changed.items()}


def _sqlstate(error: sa.exc.DBAPIError) -> str | None:
    return getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)


def _locked(conn: sa.Connection, job_ids: list[str], guards: list[str]) -> Iterator[Any]:
    """The versions and guarded columns of these jobs, their rows locked until the transaction ends
    (on SQLite the transaction holds the database's write lock from its start)."""
    columns = [jobs.c.id, jobs.c.version, *(jobs.c[column] for column in guards)]
    for chunk in chunks(sorted(job_ids)):
        query = sa.select(*columns).where(jobs.c.id.in_(chunk)).order_by(jobs.c.id)
        yield from conn.execute(query.with_for_update())


def _kinds(changes: list[_Guarded]) -> list[list[_Guarded]]:
    """Changes that set the same columns under the same guard: one statement each."""
    kinds: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Guarded]] = {}
    for change in changes:
        key = (tuple(sorted(change.values)), tuple(sorted(change.guard)))
        kinds.setdefault(key, []).append(change)
    return list(kinds.values())


def _update(conn: sa.Connection, changes: list[_Guarded]) -> None:
    first = changes[0]
    # the guard stays in the statement too: the locked rows cannot have changed since
    where = [jobs.c.id == sa.bindparam("b_id")]
    where += [jobs.c[column] == sa.bindparam(f"b_{column}") for column in sorted(first.guard)]
    statement = (
        jobs.update()
        .where(*where)
        .values(
            version=jobs.c.version + 1,
            **{
                column: sa.bindparam(f"v_{column}", type_=jobs.c[column].type)
                for column in first.values
            },
        )
    )
    conn.execute(
        statement,
        [
            {
                "b_id": change.job_id,
                **{f"b_{column}": value for column, value in change.guard.items()},
                **{f"v_{column}": value for column, value in change.values.items()},
            }
            for change in changes
        ],
    )


def _announce(store: StoreCore, conn: sa.Connection, moved: list[tuple[str, str]]) -> None:
    """Every changed job on ``JOB_CHANNEL``, heard once the transaction commits."""
    if store.dialect != "postgresql":
        return
    payloads = [f"{job_id} {phase}" for job_id, phase in moved]
    conn.execute(_NOTIFY, {"channel": JOB_CHANNEL, "payloads": payloads})
