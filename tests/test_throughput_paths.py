"""The fast paths keep the guarantees: background and batched submissions are claimed before
they return, a crash leaves them to be looked for, refreshes parse only changed rows."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends.base import BackendOptions, NativeDependency
from jobbridge.errors import JobbridgeError
from jobbridge.job import Handover, Job, JobStatus
from jobbridge.store.connection import head_revision as _head_revision
from tests.doubles import FakeBackend, FakeCluster
from tests.test_store import make_job

SPEC = JobSpec(executable="true")


def make_engine(url: str, cluster: FakeCluster, **options: object) -> Engine:
    backend = FakeBackend(
        cluster, options=BackendOptions.model_validate({"min_refresh_interval": 0, **options})
    )
    return Engine(
        Store(url),
        {"fake": backend},
        settings=EngineSettings(claim_timeout=0.5),
        default_backend="fake",
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engine.db'}"


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def engine(url: str, cluster: FakeCluster) -> Iterator[Engine]:
    made = make_engine(url, cluster)
    yield made
    made.close()


def test_a_background_submission_is_claimed_before_it_returns(
    engine: Engine, cluster: FakeCluster
) -> None:
    gate = threading.Event()
    backend = engine.backend()
    assert isinstance(backend, FakeBackend)
    backend.on_submit.append(lambda job: gate.wait(10))
    job = engine.submit(SPEC, background=True)
    assert job.handover is Handover.CLAIMED
    assert engine.get(job.id).handover is Handover.CLAIMED
    gate.set()
    assert engine.settle(10)
    done = engine.get(job.id)
    assert done.is_submitted and done.handover is Handover.SUBMITTED
    assert cluster.submit_calls == 1


def test_submit_many_records_once_and_hands_each_over_once(
    engine: Engine, cluster: FakeCluster
) -> None:
    jobs = engine.submit_many([SPEC] * 25)
    assert len({job.id for job in jobs}) == 25
    assert all(job.is_submitted for job in jobs)
    assert cluster.submit_calls == 25
    assert len(set(cluster.by_job.values())) == 25


def test_submit_many_keeps_to_the_backends_limit(url: str, cluster: FakeCluster) -> None:
    engine = make_engine(url, cluster, max_jobs_in_flight=3)
    try:
        jobs = engine.submit_many([SPEC] * 5)
        assert sum(job.is_submitted for job in jobs) == 3
        assert sum(job.handover is Handover.WAITING for job in jobs) == 2
    finally:
        engine.close()


def test_submit_many_lets_dependent_jobs_wait(engine: Engine, cluster: FakeCluster) -> None:
    parent = engine.submit(SPEC)
    child = JobSpec.model_validate({**SPEC.model_dump(), "depends_on": [parent.id]})
    jobs = engine.submit_many([SPEC, child])
    assert jobs[0].is_submitted
    assert not jobs[1].is_submitted


def test_a_background_submission_without_answer_is_looked_for_not_lost(
    url: str, cluster: FakeCluster
) -> None:
    """The backend took the job but its answer never came, and the submitting engine went
    away: the next engine locates the native job and adopts it, without a second
    submission."""
    first = make_engine(url, cluster)
    gate = threading.Event()
    backend = first.backend()
    assert isinstance(backend, FakeBackend)

    def die_after_submitting(job: object) -> None:
        gate.wait(10)

    backend.on_submit.append(die_after_submitting)
    cluster.fail_after_submit = RuntimeError("process killed")  # the answer never comes
    job = first.submit(SPEC, background=True)
    gate.set()
    first.settle(10)
    first.close()
    cluster.fail_after_submit = None
    second = make_engine(url, cluster)
    try:
        found = second.get(job.id)
        assert not found.phase.is_final
        second.refresh(force=True)
        adopted = second.get(job.id)
        assert adopted.native_id == cluster.by_job[job.id]
        assert cluster.submit_calls == 1
    finally:
        second.close()


def test_a_refresh_parses_only_changed_rows(engine: Engine, cluster: FakeCluster) -> None:
    jobs = [engine.submit(SPEC) for _ in range(5)]
    assert engine.settle(10)
    jobs = engine.store.get_many(job.id for job in jobs)
    engine.refresh(force=True)
    first = {job.id: job for job in engine.store.handed_over("fake")}
    second = {job.id: job for job in engine.store.handed_over("fake")}
    assert all(second[job_id] is first[job_id] for job_id in first)
    cluster.set(jobs[0], Phase.EXECUTING)
    engine.refresh(force=True)
    third = {job.id: job for job in engine.store.handed_over("fake")}
    assert third[jobs[0].id].phase is Phase.EXECUTING
    assert third[jobs[1].id] is first[jobs[1].id]


def test_a_write_by_another_process_is_seen(url: str) -> None:
    mine, theirs = Store(url), Store(url)
    try:
        job = make_job(native_id="7", backend="fake")
        mine.add([job])
        assert mine.get(job.id).detail is None
        theirs.update(job.id, detail="SEEN")
        assert mine.get(job.id).detail == "SEEN"
        assert mine.handed_over("fake")[0].detail == "SEEN"
    finally:
        mine.close()
        theirs.close()


def test_the_head_revision_is_alembics() -> None:
    from alembic.script import ScriptDirectory

    from jobbridge.store.connection import alembic_config as _alembic_config

    assert _head_revision() == ScriptDirectory.from_config(_alembic_config()).get_current_head()


def test_a_backend_gets_no_more_handover_threads_than_it_allows(
    url: str, cluster: FakeCluster
) -> None:
    def most_at_once(threads: int | None) -> int:
        backend = FakeBackend(cluster, options=BackendOptions(min_refresh_interval=0))
        backend.handover_threads = threads
        inside, most, lock = 0, 0, threading.Lock()

        def submitting(job: Job) -> None:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

        backend.on_submit.append(submitting)
        with Engine(Store(url), {"fake": backend}, default_backend="fake") as engine:
            done = engine.submit_many([SPEC] * 40)
        assert all(job.is_submitted for job in done)
        return most

    assert most_at_once(None) > 1, "the engine's own limit, 4 by default"
    assert most_at_once(1) == 1


class TellingBackend(FakeBackend):
    """A fake whose jobs end as soon as they are submitted, and say so through a pipe (as
    local jobs do through their FIFO), before their submission has even returned."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(cluster, options=BackendOptions(min_refresh_interval=60))
        self.reading, self.writing = os.pipe()
        os.set_blocking(self.reading, False)

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        native = super().submit(job, dependencies)
        self.cluster.phases[native] = JobStatus(phase=Phase.COMPLETED, exit_code=0)
        os.write(self.writing, f"{job.id}\n".encode())
        return native

    def news(self) -> int | None:
        return self.reading

    def read_news(self) -> list[str]:
        try:
            return os.read(self.reading, 65536).decode().split()
        except BlockingIOError:
            return []


def test_news_that_comes_before_the_handover_is_recorded_is_not_lost(
    url: str, cluster: FakeCluster
) -> None:
    backend = TellingBackend(cluster)
    recorded = threading.Event()
    store = Store(url)
    finish_claim = store.finish_claim

    def finish_late(*args: Any, **kwargs: Any) -> Job | None:
        recorded.wait(10)  # the news is read meanwhile, and finds the job not handed over
        return finish_claim(*args, **kwargs)

    store.finish_claim = finish_late  # type: ignore[method-assign]
    settings = EngineSettings(refresh_interval=60)  # no poll would find it in time
    with Engine(store, {"fake": backend}, settings=settings, default_backend="fake") as engine:
        job = engine.submit(SPEC)
        threading.Timer(0.3, recorded.set).start()
        asked = time.monotonic()
        [done] = engine.wait([job.id], timeout=10)
    assert done.phase is Phase.COMPLETED
    assert time.monotonic() - asked < 5, "the news was asked about again once recorded"


class BatchBackend(FakeBackend):
    """A fake that takes many jobs in one step, and counts its steps."""

    batch_submission = True

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(cluster, options=BackendOptions(min_refresh_interval=0))
        self.batches: list[int] = []
        self.crash_after_batch = False

    def submit_many(self, jobs: Sequence[Job]) -> list[str | Exception]:
        self.batches.append(len(jobs))
        answers = super().submit_many(jobs)
        if self.crash_after_batch:  # the backend has them all, the answer never comes back
            raise RuntimeError("process killed")
        return answers


def batch_engine(url: str, backend: BatchBackend) -> Engine:
    settings = EngineSettings(claim_timeout=0.3)
    return Engine(Store(url), {"fake": backend}, settings=settings, default_backend="fake")


def test_jobs_submitted_one_by_one_are_handed_over_together(url: str, cluster: FakeCluster) -> None:
    backend = BatchBackend(cluster)
    gate = threading.Event()
    backend.on_submit.append(lambda job: gate.wait(10))
    with batch_engine(url, backend) as engine:
        jobs = [engine.submit(SPEC) for _ in range(20)]
        assert all(job.handover is Handover.CLAIMED for job in jobs)
        gate.set()
        assert engine.settle(10)
        done = engine.store.get_many(job.id for job in jobs)
    assert all(job.handover is Handover.SUBMITTED for job in done)
    assert cluster.submit_calls == 20 and len(set(cluster.by_job.values())) == 20
    assert max(backend.batches) > 1, "jobs queued meanwhile share a handover"


def test_a_refused_job_in_a_batch_keeps_no_other_back(url: str, cluster: FakeCluster) -> None:
    backend = BatchBackend(cluster)
    refused = JobSpec(executable="refuse-me")

    def refuse(job: Job) -> None:
        if job.spec.executable == "refuse-me":
            raise JobbridgeError("no such program")

    backend.on_submit.append(refuse)
    with batch_engine(url, backend) as engine:
        jobs = engine.submit_many([SPEC, refused, SPEC])
    assert [job.is_submitted for job in jobs] == [True, False, True]
    assert (jobs[1].phase, jobs[1].detail) == (Phase.ERROR, "SUBMIT_FAILED")
    assert backend.batches == [3]


def test_a_batch_whose_answer_never_came_is_adopted_not_repeated(
    url: str, cluster: FakeCluster
) -> None:
    first_backend = BatchBackend(cluster)
    first_backend.crash_after_batch = True
    first = batch_engine(url, first_backend)
    jobs = first.submit_many([SPEC] * 5)
    first.close()
    assert not any(job.is_submitted for job in jobs)
    assert cluster.submit_calls == 5
    time.sleep(0.4)  # the claims' heartbeat stopped with their process
    second = batch_engine(url, BatchBackend(cluster))
    try:
        second.refresh(force=True)
        found = second.store.get_many(job.id for job in jobs)
        assert [job.native_id for job in found] == [cluster.by_job[job.id] for job in jobs]
        assert cluster.submit_calls == 5
    finally:
        second.close()


def test_an_unchanged_listing_is_reused_only_while_nothing_was_committed(url: str) -> None:
    mine, theirs = Store(url), Store(url)
    try:
        jobs = [make_job(native_id=str(n), backend="fake") for n in range(3)]
        mine.add(jobs)
        assert [job.id for job in mine.handed_over("fake")] == [job.id for job in jobs]
        again = mine.handed_over("fake")
        assert all(a is b for a, b in zip(again, mine.handed_over("fake"), strict=True))
        theirs.update(jobs[0].id, detail="SEEN")  # another process
        assert mine.handed_over("fake")[0].detail == "SEEN"
        theirs.move(jobs[1].id, Phase.QUEUED, Phase.COMPLETED)
        assert [job.id for job in mine.handed_over("fake")] == [jobs[0].id, jobs[2].id]
        mine.update(jobs[2].id, detail="MINE")  # this process, through another connection
        assert mine.handed_over("fake")[-1].detail == "MINE"
        late = make_job(native_id="9", backend="fake")
        theirs.add([late])
        assert mine.handed_over("fake")[-1].id == late.id
    finally:
        mine.close()
        theirs.close()
