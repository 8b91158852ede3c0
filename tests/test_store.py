"""The store, run alike on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from jobbridge import Job, JobNotFoundError, JobSpec, Phase, Store
from jobbridge.claims import new_token
from jobbridge.errors import InvalidTransitionError
from jobbridge.job import new_job_id, utcnow

SPEC = JobSpec(
    executable="analyse",
    arguments=["--input", "a b.fits"],
    resources={"walltime": "1-02:03:04", "memory": "4G", "cores_per_process": 2},
    array="0-9%2",
    depends_on=["afterany:abc123"],
    environment={"OMP_NUM_THREADS": "2"},
    attributes={"slurm.constraint": "haswell"},
)


def make_job(phase: Phase = Phase.QUEUED, **fields: object) -> Job:
    values: dict[str, object] = {
        "id": new_job_id(),
        "spec": SPEC,
        "backend": "local",
        "phase": phase,
        "created": utcnow(),
        **fields,
    }
    return Job.model_validate(values)


def test_a_job_comes_back_as_it_went_in(store: Store) -> None:
    job = make_job(owner="alice", array_id="arr1", array_index=3, queued=utcnow())
    store.add([job])
    with fresh(store) as other:  # which parses the row, where this store kept what it wrote
        read = other.get(job.id)
    assert read == job == store.get(job.id)
    assert read.created.tzinfo is not None


def test_a_change_rolled_back_is_not_taken_for_the_row(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job()
    store.add([job])

    def fail(*args: object) -> None:
        raise RuntimeError("the transaction fails after its update")

    monkeypatch.setattr(store, "_announce", fail)
    with pytest.raises(RuntimeError):
        store.move(job.id, Phase.QUEUED, Phase.EXECUTING)
    monkeypatch.undo()
    with fresh(store) as other:  # another writer's change, at the version the failed one had
        other.move(job.id, Phase.QUEUED, Phase.ABORTED, detail="CANCELLED")
    assert store.get(job.id).phase is Phase.ABORTED


@contextlib.contextmanager
def fresh(store: Store) -> Iterator[Store]:
    """Another store on the same database: it has parsed nothing yet."""
    other = Store(store.url, migrate=False)
    try:
        yield other
    finally:
        other.close()


def test_move_is_conditional_and_recorded(store: Store) -> None:
    job = make_job()
    store.add([job])
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    moved = store.move(job.id, Phase.QUEUED, Phase.EXECUTING, started=started)
    assert moved is not None and moved.phase is Phase.EXECUTING and moved.started == started
    assert store.move(job.id, Phase.QUEUED, Phase.EXECUTING) is None  # lost the race
    ended = store.move(job.id, Phase.EXECUTING, Phase.ERROR, detail="TIMEOUT", exit_code=143)
    assert ended is not None and (ended.detail, ended.exit_code) == ("TIMEOUT", 143)
    trail = store.events(job.id)
    assert [(e.old_phase, e.new_phase, e.detail) for e in trail] == [
        (None, Phase.QUEUED, None),
        (Phase.QUEUED, Phase.EXECUTING, None),
        (Phase.EXECUTING, Phase.ERROR, "TIMEOUT"),
    ]
    assert trail[0].time <= trail[1].time <= trail[2].time


def test_move_refuses_to_go_backwards(store: Store) -> None:
    job = make_job(Phase.COMPLETED)
    store.add([job])
    with pytest.raises(InvalidTransitionError):
        store.move(job.id, Phase.COMPLETED, Phase.EXECUTING)


def test_find_filters_and_orders(store: Store) -> None:
    now = utcnow()
    old = make_job(owner="alice", created=now - timedelta(days=2))
    mine = make_job(Phase.EXECUTING, owner="alice", created=now - timedelta(hours=1), native_id="7")
    theirs = make_job(Phase.COMPLETED, owner="bob", created=now, backend="slurm")
    named = make_job(
        owner="bob", created=now - timedelta(minutes=1), spec=SPEC.replace(name="special")
    )
    store.add([old, mine, theirs, named])

    def ids(**filters: object) -> list[str]:
        return [job.id for job in store.find(**filters)]  # type: ignore[arg-type]

    assert ids() == [theirs.id, named.id, mine.id, old.id]
    assert ids(newest_first=False) == [old.id, mine.id, named.id, theirs.id]
    assert ids(owner="alice") == [mine.id, old.id]
    assert ids(phases=[Phase.EXECUTING, Phase.COMPLETED]) == [theirs.id, mine.id]
    assert ids(backend="slurm") == [theirs.id]
    assert ids(name="special") == [named.id]
    assert ids(since=now - timedelta(hours=2)) == [theirs.id, named.id, mine.id]
    assert ids(submitted=True) == [mine.id]
    assert ids(limit=2) == [theirs.id, named.id]
    assert [job.id for job in store.active()] == [old.id, mine.id, named.id]
    assert [job.id for job in store.active("slurm")] == []


def test_get_many_keeps_order_and_names_a_missing_id(store: Store) -> None:
    jobs = [make_job() for _ in range(3)]
    store.add(jobs)
    assert [j.id for j in store.get_many([jobs[2].id, jobs[0].id])] == [jobs[2].id, jobs[0].id]
    with pytest.raises(JobNotFoundError, match="nope"):
        store.get_many([jobs[0].id, "nope"])


def test_only_one_caller_claims_a_job(store: Store) -> None:
    job = make_job()
    store.add([job])
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(store.claim(job.id, new_token()))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_in_flight_counts_submitted_and_claimed_active_jobs(store: Store) -> None:
    waiting, claimed, running, done = (
        make_job(),
        make_job(),
        make_job(native_id="1"),
        make_job(Phase.COMPLETED, native_id="2"),
    )
    store.add([waiting, claimed, running, done])
    store.claim(claimed.id, new_token())
    assert store.count_in_flight("local") == 2


def test_delete_takes_the_events_along(store: Store) -> None:
    job = make_job()
    store.add([job])
    store.delete(job.id)
    assert store.events(job.id) == []
    with pytest.raises(JobNotFoundError):
        store.get(job.id)
    with pytest.raises(JobNotFoundError):
        store.delete(job.id)


def test_four_writers_at_once(store_url: str) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        own = Store(store_url)
        try:
            for _ in range(100):
                own.add([make_job()])
        except BaseException as error:
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check = Store(store_url)
    jobs = check.find()
    check.close()
    assert len(jobs) == 400
    assert len({job.id for job in jobs}) == 400


def test_processes_opening_a_new_database_at_once_migrate_it_once(store_url: str) -> None:
    code = "import sys; from jobbridge import Store; Store(sys.argv[1]).close()"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, store_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
    store = Store(store_url)
    store.add([make_job()])
    assert store.count() == 1
    store.close()


def test_dependents_are_found_by_their_parent(store: Store) -> None:
    parent = make_job(spec=SPEC.replace(depends_on=[]))
    first = make_job(spec=SPEC.replace(depends_on=[parent.id]))
    second = make_job(spec=SPEC.replace(depends_on=[f"afterany:{parent.id}", "other"]))
    store.add([parent, first, second])
    found = {(job.id, condition) for job, condition in store.dependents(parent.id)}
    assert found == {(first.id, "afterok"), (second.id, "afterany")}
    store.delete(first.id)
    assert [job.id for job, _ in store.dependents(parent.id)] == [second.id]


def test_upgrading_an_older_store_keeps_every_dependency(store_url: str) -> None:
    from alembic import command

    from jobbridge.store.connection import alembic_config as _alembic_config

    old = Store(store_url, migrate=False)
    with old._writer.begin() as conn:
        config = _alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, name, backend, phase, spec, created)"
                " VALUES ('child', 'c', 'local', 'QUEUED', :spec, :created)"
            ),
            {
                "spec": json.dumps(
                    SPEC.replace(depends_on=["afterany:mum"]).model_dump(mode="json")
                ),
                "created": "2026-01-01 00:00:00",
            },
        )
    old.close()
    upgraded = Store(store_url)
    assert [(job.id, c) for job, c in upgraded.dependents("mum")] == [("child", "afterany")]
    upgraded.close()


def test_a_new_spec_brings_its_dependencies_along(store: Store) -> None:
    first, second = make_job(), make_job()
    waiting = make_job(Phase.PENDING)
    store.add([first, second])
    store.add([waiting.model_copy(update={"spec": waiting.spec.replace(depends_on=[first.id])})])
    assert [job.id for job, _ in store.dependents(first.id)] == [waiting.id]
    changed = waiting.spec.replace(depends_on=[f"afterany:{second.id}"])
    assert store.replace_spec(waiting.id, changed, Phase.PENDING) is not None
    assert store.dependents(first.id) == []
    assert [(job.id, how) for job, how in store.dependents(second.id)] == [(waiting.id, "afterany")]
