"""The count behind the per-user limit of jobs that have not ended: only the owner's service
jobs that have not ended, whatever else the store holds (ended jobs of the owner, other
owners' jobs, the owner's jobs made outside the service); anonymous clients share one
count; creations racing each other cannot all squeeze under the limit. A user's count reads
only that user's jobs that have not ended, and a creation writes in one transaction."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobbridge import Engine, Job, JobSpec, Phase, Store
from jobbridge.job import new_job_id
from jobbridge.store.uws import (
    ANONYMOUS_PREFIX,
    User,
    UwsJobRecord,
    UwsStore,
    _count_active_query,
)
from jobbridge.uws import create_app
from jobbridge.uws.errors import LimitReached
from tests.uws_support import add_user, service_config

SPEC = JobSpec(executable="true", name="sum")
START = datetime.now(UTC) - timedelta(days=1)


def record(store: Store, owner: str | None, phase: Phase, *, service: bool = True) -> None:
    created = START + timedelta(microseconds=store.count())
    job = Job(
        id=new_job_id(), spec=SPEC, backend="local", owner=owner, phase=phase, created=created,
    )  # fmt: skip
    store.add([job])
    if service:
        UwsStore(store).add_job(
            UwsJobRecord(
                job_id=job.id, definition="sum", owner=owner, run_id=None, parameters=(),
                execution_duration=600, quote=None, created=created,
            )
        )  # fmt: skip


def test_only_the_owners_service_jobs_that_have_not_ended_count(store: Store) -> None:
    for phase in (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED) * 30:
        record(store, "alice", phase)
    for phase in (Phase.PENDING, Phase.QUEUED, Phase.EXECUTING, Phase.HELD, Phase.UNKNOWN):
        record(store, "alice", phase)
    record(store, "alice", Phase.SUSPENDED)
    record(store, "alice", Phase.QUEUED, service=False)  # not a service job
    record(store, "bob", Phase.QUEUED)
    record(store, "bob", Phase.COMPLETED)
    uws = UwsStore(store)
    assert uws.count_active("alice") == 6
    assert uws.count_active("bob") == 1
    assert uws.count_active("carol") == 0


def test_anonymous_clients_share_one_count(store: Store) -> None:
    record(store, None, Phase.PENDING)
    record(store, f"{ANONYMOUS_PREFIX}one", Phase.EXECUTING)
    record(store, f"{ANONYMOUS_PREFIX}two", Phase.QUEUED)
    record(store, f"{ANONYMOUS_PREFIX}two", Phase.COMPLETED)
    record(store, "alice", Phase.QUEUED)
    uws = UwsStore(store)
    assert uws.count_active(f"{ANONYMOUS_PREFIX}three") == 3
    assert uws.count_active("alice") == 1


def test_creations_racing_each_other_stay_under_the_limit(
    engine: Engine, isolated_data_dir: Path
) -> None:
    config = service_config(isolated_data_dir, max_active_jobs=5)
    app = create_app(config, engine=engine)
    service = app.state.uws.service
    add_user(engine, "alice")
    alice = User(name="alice")
    start = threading.Barrier(12)

    def create(_: int) -> bool:
        start.wait()
        try:
            service.create("sum", alice, [("count", "1")])
        except LimitReached:
            return False
        return True

    with ThreadPoolExecutor(12) as pool:
        made = list(pool.map(create, range(12)))
    assert made.count(True) == 5, made
    assert UwsStore(engine.store).count_active("alice") == 5


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_users_count_reads_only_that_users_jobs_that_have_not_ended(store: Store) -> None:
    """The plan of the count: the index of jobs by owner and phase alone, never the jobs
    that other users have running nor the user's ended ones (on SQLite, whose plans can be
    asked for; PostgreSQL chooses by its statistics)."""
    query, values = _count_active_query("alice")
    with store.reading() as conn:
        compiled = query.compile(dialect=conn.dialect)
        bound = compiled.construct_params(values)
        plan = conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {compiled}",
            tuple(bound[name] for name in compiled.positiontup or ()),
        ).all()
    steps = [str(row[-1]) for row in plan]
    assert any("COVERING INDEX ix_jobs_owner_phase (owner=? AND phase=?)" in s for s in steps), (
        steps
    )


def test_a_creation_is_one_write_transaction_of_five_statements(
    engine: Engine, isolated_data_dir: Path
) -> None:
    """A creation writes the job, its first event and its record, and counts the owner's
    jobs that have not ended, all in one transaction, reading nothing back."""
    app = create_app(service_config(isolated_data_dir), engine=engine)
    service = app.state.uws.service
    alice = User(name="alice")
    service.create("sum", alice, [("count", "1")])  # the first one may read the schema
    mine = threading.get_ident()
    statements: list[str] = []

    def seen(*args: object) -> None:
        if threading.get_ident() == mine:
            statements.append(" ".join(str(args[2]).split()[:3]))

    sa.event.listen(engine.store._engine, "before_cursor_execute", seen)
    try:
        service.create("sum", alice, [("count", "2")])
    finally:
        sa.event.remove(engine.store._engine, "before_cursor_execute", seen)
    assert statements == [
        "BEGIN IMMEDIATE",
        "INSERT INTO jobs",
        "INSERT INTO events",
        "SELECT count(*) AS",
        "INSERT INTO uws_jobs",
    ], statements
