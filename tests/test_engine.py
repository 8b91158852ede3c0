"""The engine's coordination logic, against a backend double that runs nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobbridge import (
    BackendError,
    BackendOptions,
    Engine,
    EngineSettings,
    Job,
    JobSpec,
    JobStateError,
    JobStatus,
    Phase,
    SpecError,
    Store,
    UnknownBackendError,
)
from jobbridge.backends.base import Missing, NativeDependency
from jobbridge.errors import CommandTimeout, ConnectionLost
from jobbridge.job import Handover, utcnow
from tests.doubles import FakeBackend, FakeCluster

SPEC = JobSpec(executable="simulate", arguments=["--steps", "10"])


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'engine.db'}"


def make_engine(db_url: str, cluster: FakeCluster, **options: object) -> Engine:
    settings = options.pop("settings", EngineSettings(status_failure_threshold=3))
    # the tests look at each handover's outcome as submit() returns it
    settings = settings.model_copy(update={"submit_in_background": False})
    native_arrays = bool(options.pop("native_arrays", False))
    native_dependencies = bool(options.pop("native_dependencies", False))
    backend = FakeBackend(
        cluster,
        options=BackendOptions.model_validate({"min_refresh_interval": 0, **options}),
        native_arrays=native_arrays,
        native_dependencies=native_dependencies,
    )
    return Engine(Store(db_url), {"fake": backend}, settings=settings, default_backend="fake")  # type: ignore[arg-type]


@pytest.fixture
def engine(db_url: str, cluster: FakeCluster) -> Iterator[Engine]:
    engine = make_engine(db_url, cluster)
    yield engine
    engine.close()


def phases(engine: Engine, jobs: list[Job]) -> list[Phase]:
    return [engine.get(job.id).phase for job in jobs]


def test_the_row_exists_before_the_backend_sees_the_job(
    engine: Engine, cluster: FakeCluster
) -> None:
    seen: list[Phase] = []
    backend = engine.backend()
    assert isinstance(backend, FakeBackend)
    backend.on_submit.append(lambda job: seen.append(engine.store.get(job.id).phase))
    job = engine.submit(SPEC)
    assert seen == [Phase.QUEUED]
    assert job.native_id == cluster.by_job[job.id]


def test_phases_follow_the_backend_and_are_recorded_as_events(
    engine: Engine, cluster: FakeCluster
) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.set(job, Phase.ERROR, exit_code=3, detail="TIMEOUT")
    engine.refresh()
    done = engine.get(job.id)
    assert (done.phase, done.exit_code, done.detail) == (Phase.ERROR, 3, "TIMEOUT")
    assert done.started is not None and done.ended is not None
    trail = [(e.old_phase, e.new_phase) for e in engine.store.events(job.id)]
    assert trail == [
        (None, Phase.QUEUED),
        (Phase.QUEUED, Phase.EXECUTING),
        (Phase.EXECUTING, Phase.ERROR),
    ]


def test_one_status_query_per_backend_per_refresh(engine: Engine, cluster: FakeCluster) -> None:
    for _ in range(200):
        engine.submit(SPEC)
    cluster.status_calls = 0
    engine.refresh()
    assert cluster.status_calls == 1


def test_a_look_at_some_jobs_asks_about_them_alone(db_url: str, cluster: FakeCluster) -> None:
    engine = make_engine(db_url, cluster, min_refresh_interval=60)
    first, second = engine.submit(SPEC), engine.submit(SPEC)
    cluster.set(first, Phase.EXECUTING)
    cluster.set(second, Phase.EXECUTING)
    assert engine.refresh_jobs([first.id, "nosuchjob000"]) == ["nosuchjob000"], "not asked"
    assert phases(engine, [first, second]) == [Phase.EXECUTING, Phase.QUEUED]
    engine.refresh()  # the look did not put the backend's own cycle off
    assert phases(engine, [first, second]) == [Phase.EXECUTING, Phase.EXECUTING]
    engine.close()


def test_min_refresh_interval_spares_the_scheduler(db_url: str, cluster: FakeCluster) -> None:
    with make_engine(db_url, cluster, min_refresh_interval=60) as engine:
        engine.submit(SPEC)
        engine.refresh()
        engine.refresh()
        engine.refresh()
        assert cluster.status_calls == 1


def test_a_failed_status_query_never_ends_a_job(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.fail_status = 1
    engine.refresh(force=True)
    assert engine.get(job.id).phase is Phase.EXECUTING


def test_repeated_failures_show_unknown_then_recover(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.fail_status = 3
    for _ in range(3):
        engine.refresh(force=True)  # skip the back-off pause
    unknown = engine.get(job.id)
    assert unknown.phase is Phase.UNKNOWN
    assert unknown.detail == "STATUS_UNAVAILABLE"
    assert "Socket timed out" in (unknown.message or "")
    cluster.set(job, Phase.COMPLETED, exit_code=0)
    engine.refresh(force=True)
    recovered = engine.get(job.id)
    assert (recovered.phase, recovered.detail, recovered.message) == (Phase.COMPLETED, None, None)


def test_failures_back_off(engine: Engine, cluster: FakeCluster) -> None:
    engine.submit(SPEC)
    cluster.fail_status = 10
    engine.refresh()
    engine.refresh()
    engine.refresh()
    assert cluster.status_calls == 1
    assert engine._poller.failures("fake") == 1


def test_a_job_never_moves_backwards(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.set(job, Phase.QUEUED)
    engine.refresh()
    assert engine.get(job.id).phase is Phase.EXECUTING
    cluster.set(job, Phase.COMPLETED)
    engine.refresh()
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    assert engine.get(job.id).phase is Phase.COMPLETED


def test_unknown_does_not_lead_back_to_queued_once_started(
    engine: Engine, cluster: FakeCluster
) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.fail_status = 3
    for _ in range(3):
        engine.refresh(force=True)
    cluster.set(job, Phase.QUEUED)
    engine.refresh(force=True)
    assert engine.get(job.id).phase is Phase.UNKNOWN


def test_hooks_run_around_submission_and_on_phase_changes(
    engine: Engine, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    engine.hooks.on_before_submit(lambda job: calls.append(f"before {job.native_id}"))
    engine.hooks.on_after_submit(lambda job: calls.append(f"after {job.native_id}"))
    engine.hooks.on_phase_change(lambda job, old: calls.append(f"{old}->{job.phase}"))

    def broken(job: Job, old: Phase) -> None:
        raise RuntimeError("callback bug")

    engine.hooks.on_phase_change(broken)
    job = engine.submit(SPEC)
    cluster.set(job, Phase.COMPLETED)
    with caplog.at_level(logging.ERROR):
        engine.refresh()
    assert calls == ["before None", f"after {job.native_id}", "QUEUED->COMPLETED"]
    assert "callback bug" in caplog.text
    assert engine.get(job.id).phase is Phase.COMPLETED


def test_a_watch_ends_when_its_callback_says_false(engine: Engine, cluster: FakeCluster) -> None:
    seen: list[Phase] = []
    job = engine.submit(SPEC)
    engine.hooks.watch(job.id, lambda j, old: seen.append(j.phase) or False)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh()
    cluster.set(job, Phase.COMPLETED)
    engine.refresh()
    assert seen == [Phase.EXECUTING]


def test_jobs_beyond_the_in_flight_limit_wait_in_jobbridge(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, max_jobs_in_flight=2) as engine:
        jobs = [engine.submit(SPEC) for _ in range(5)]
        assert [job.is_submitted for job in jobs] == [True, True, False, False, False]
        assert phases(engine, jobs) == [Phase.QUEUED] * 5
        for job in jobs[:2]:
            cluster.set(engine.get(job.id), Phase.COMPLETED)
        engine.refresh()  # sees the two end
        engine.refresh()  # hands over two more
        submitted = [engine.get(job.id).is_submitted for job in jobs]
        assert submitted == [True, True, True, True, False]


def test_array_members_are_jobs_with_their_index(engine: Engine, cluster: FakeCluster) -> None:
    members = engine.submit_array(SPEC.replace(array="0-9%3"))
    assert [m.array_index for m in members] == list(range(10))
    assert len({m.array_id for m in members}) == 1
    assert sum(m.is_submitted for m in members) == 3  # the %3 cap, enforced by jobbridge
    assert cluster.submit_calls == 3


def test_a_native_array_is_one_submission(db_url: str, cluster: FakeCluster) -> None:
    with make_engine(db_url, cluster, native_arrays=True) as engine:
        members = engine.submit_array(SPEC.replace(array="0-99"))
        assert cluster.array_calls == 1
        assert cluster.submit_calls == 0
        assert members[7].native_id is not None and members[7].native_id.endswith("_7")


def test_submit_and_submit_array_refuse_the_other_kind(engine: Engine) -> None:
    with pytest.raises(SpecError):
        engine.submit(SPEC.replace(array="0-3"))
    with pytest.raises(SpecError):
        engine.submit_array(SPEC)


@pytest.mark.parametrize(
    ("condition", "parent_phase", "child_runs"),
    [
        ("afterok", Phase.COMPLETED, True),
        ("afterok", Phase.ERROR, False),
        ("afterany", Phase.ERROR, True),
        ("afternotok", Phase.COMPLETED, False),
        ("afternotok", Phase.ABORTED, True),
    ],
)
def test_dependencies(
    engine: Engine, cluster: FakeCluster, condition: str, parent_phase: Phase, child_runs: bool
) -> None:
    parent = engine.submit(SPEC)
    child = engine.submit(SPEC.replace(depends_on=[f"{condition}:{parent.id}"]))
    assert not child.is_submitted
    engine.refresh()
    assert not engine.get(child.id).is_submitted
    cluster.set(parent, parent_phase)
    engine.refresh()
    engine.refresh()
    child = engine.get(child.id)
    if child_runs:
        assert child.is_submitted and child.phase is Phase.QUEUED
    else:
        assert (child.phase, child.detail) == (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED")
        assert not child.is_submitted


def test_a_scheduler_that_enforces_dependencies_gets_the_job_at_once(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, native_dependencies=True) as engine:
        parent = engine.submit(SPEC)
        done = engine.submit(SPEC)
        cluster.set(done, Phase.COMPLETED)
        engine.refresh()
        child = engine.submit(SPEC.replace(depends_on=[parent.id, f"afterany:{done.id}"]))
        assert child.is_submitted
        assert cluster.dependencies[child.id] == [
            NativeDependency(parent.native_id or "", "afterok")
        ]


def test_a_job_the_scheduler_says_can_never_run_is_cancelled_there(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, native_dependencies=True) as engine:
        parent = engine.submit(SPEC)
        child = engine.submit(SPEC.replace(depends_on=[parent.id]))
        cluster.set(parent, Phase.ERROR, exit_code=1)
        cluster.set(child, Phase.ABORTED, detail="DEPENDENCY_NEVER_SATISFIED")
        engine.refresh()
        assert engine.get(child.id).phase is Phase.ABORTED
        assert cluster.cancelled == [child.native_id]


def test_cancelling_a_parent_ends_its_afterok_dependents_once_it_is_cancelled(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, native_dependencies=True) as engine:
        parent = engine.submit(SPEC)
        strict = engine.submit(SPEC.replace(depends_on=[parent.id]))
        lenient = engine.submit(SPEC.replace(depends_on=[f"afterany:{parent.id}"]))
        engine.cancel(parent.id)
        assert cluster.cancelled == [parent.native_id, strict.native_id]
        child = engine.get(strict.id)
        assert (child.phase, child.detail) == (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED")
        assert engine.get(lenient.id).phase is Phase.QUEUED


def test_a_parent_ending_badly_ends_its_waiting_dependents(
    engine: Engine, cluster: FakeCluster
) -> None:
    parent = engine.submit(SPEC)
    child = engine.submit(SPEC.replace(depends_on=[parent.id]))
    grandchild = engine.submit(SPEC.replace(depends_on=[child.id]))
    cluster.set(parent, Phase.ERROR, exit_code=2)
    engine.refresh()
    for job in (child, grandchild):
        assert engine.get(job.id).detail == "DEPENDENCY_NEVER_SATISFIED"
    assert cluster.submit_calls == 1


def test_a_condition_the_scheduler_cannot_enforce_is_waited_for(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, native_dependencies=True) as engine:
        backend = engine.backend()
        backend.native_conditions = frozenset({"afterok", "afterany"})  # type: ignore[misc]
        parent = engine.submit(SPEC)
        child = engine.submit(SPEC.replace(depends_on=[f"afternotok:{parent.id}"]))
        assert not child.is_submitted
        cluster.set(parent, Phase.ERROR, exit_code=1)
        engine.refresh()
        engine.refresh()
        assert engine.get(child.id).is_submitted
        assert cluster.dependencies[child.id] == []


def test_a_native_array_with_a_cap_goes_whole_to_the_scheduler(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, native_arrays=True) as engine:
        members = engine.submit_array(SPEC.replace(array="0-9%3"))
        assert (cluster.array_calls, cluster.submit_calls) == (1, 0)
        assert all(member.is_submitted for member in members)


def test_array_members_beyond_the_limits_go_one_by_one(db_url: str, cluster: FakeCluster) -> None:
    with make_engine(db_url, cluster, native_arrays=True, max_jobs_in_flight=4) as engine:
        members = engine.submit_array(SPEC.replace(array="0-9"))
        assert (cluster.array_calls, cluster.submit_calls) == (0, 4)
        assert sum(member.is_submitted for member in members) == 4


def test_a_dependency_on_an_unknown_job_is_refused(engine: Engine) -> None:
    with pytest.raises(SpecError, match="nosuchjob"):
        engine.submit(SPEC.replace(depends_on=["nosuchjob"]))
    assert engine.store.count() == 0


def test_an_unknown_backend_names_the_known_ones(engine: Engine) -> None:
    with pytest.raises(UnknownBackendError, match="fake"):
        engine.submit(SPEC, backend="slurmm")


def test_a_refused_submission_ends_error_with_the_reason(
    engine: Engine, cluster: FakeCluster
) -> None:
    cluster.fail_submit = BackendError("sbatch: error: invalid partition specified: gpu")
    job = engine.submit(SPEC)
    assert (job.phase, job.detail) == (Phase.ERROR, "SUBMIT_FAILED")
    assert "invalid partition" in (job.message or "")


def test_a_passing_submission_failure_is_retried_after_a_pause(
    db_url: str, cluster: FakeCluster
) -> None:
    settings = EngineSettings(retry_delay=0.2, max_backoff=1)
    with make_engine(db_url, cluster, settings=settings) as engine:
        cluster.fail_submit = BackendError("connection refused", retryable=True)
        job = engine.submit(SPEC)
        assert job.phase is Phase.QUEUED and not job.is_submitted
        assert "will retry in 0.2 s" in (job.message or "")
        cluster.fail_submit = None
        engine.refresh()
        assert not engine.get(job.id).is_submitted  # not before its pause is over
        time.sleep(0.25)
        engine.refresh()
        assert engine.get(job.id).is_submitted
        assert cluster.submit_calls == 2


def test_a_submission_that_died_before_the_backend_heard_is_made_again(
    db_url: str, cluster: FakeCluster
) -> None:
    settings = EngineSettings(claim_timeout=0.05)
    with make_engine(db_url, cluster, settings=settings) as engine:
        backend = engine.backend()
        assert isinstance(backend, FakeBackend)

        def crash_before_submit(job: Job) -> None:
            raise SystemExit("the submitting process died")

        backend.on_submit.append(crash_before_submit)
        with pytest.raises(SystemExit):
            engine.submit(SPEC)
        [ghost] = engine.store.find()
        assert ghost.handover is Handover.CLAIMED and not ghost.is_submitted
    time.sleep(0.1)  # the claim's heartbeat is older than claim_timeout
    with make_engine(db_url, cluster, settings=settings) as engine:
        engine.refresh()
        found = engine.get(ghost.id)
        assert found.is_submitted and found.phase is Phase.QUEUED
        assert cluster.submit_calls == 2
        details = [event.detail for event in engine.store.events(ghost.id)]
        assert "RESUBMITTING" in details


def test_a_submission_that_died_after_the_backend_took_it_is_adopted(
    db_url: str, cluster: FakeCluster
) -> None:
    settings = EngineSettings(claim_timeout=0.05)
    with make_engine(db_url, cluster, settings=settings) as engine:
        backend = engine.backend()
        assert isinstance(backend, FakeBackend)
        backend.on_submit.append(lambda job: cluster.by_job.__setitem__(job.id, "4242"))

        def crash(job: Job) -> None:
            raise SystemExit("died after the scheduler accepted the job")

        backend.on_submit.append(crash)
        cluster.phases["4242"] = JobStatus(phase=Phase.EXECUTING)
        with pytest.raises(SystemExit):
            engine.submit(SPEC)
    time.sleep(0.1)
    with make_engine(db_url, cluster, settings=settings) as engine:
        engine.refresh()
        [job] = engine.store.find()
        assert job.native_id == "4242"
        assert job.phase is Phase.EXECUTING
        assert cluster.submit_calls == 1


def test_a_live_slow_submission_is_not_taken_from_its_process(
    db_url: str, cluster: FakeCluster
) -> None:
    """The claim's heartbeat keeps a second engine from judging it dead, however slow."""
    settings = EngineSettings(claim_timeout=0.2, refresh_interval=0.05)
    with (
        make_engine(db_url, cluster, settings=settings) as engine,
        make_engine(db_url, cluster, settings=settings) as other,
    ):
        backend = engine.backend()
        assert isinstance(backend, FakeBackend)
        backend.on_submit.append(lambda job: time.sleep(1.0))
        other.start_background()
        job = engine.submit(SPEC)
        other.stop_background()
        assert job.is_submitted and cluster.submit_calls == 1
        assert engine.get(job.id).native_id == job.native_id


def test_a_submission_without_answer_is_found_and_never_repeated(
    engine: Engine, cluster: FakeCluster
) -> None:
    cluster.fail_after_submit = CommandTimeout(["sbatch"], 60)
    job = engine.submit(SPEC)
    assert (job.phase, job.handover) == (Phase.QUEUED, Handover.UNCERTAIN)
    assert "outcome unknown" in (job.message or "")
    cluster.fail_after_submit = None
    engine.refresh()
    found = engine.get(job.id)
    assert found.native_id == cluster.by_job[job.id]
    assert cluster.submit_calls == 1
    assert "ADOPTED" in [event.detail for event in engine.store.events(job.id)]


def test_duplicates_found_with_an_uncertain_submission_are_cancelled(
    engine: Engine, cluster: FakeCluster
) -> None:
    cluster.fail_after_submit = ConnectionLost("the master connection died")
    job = engine.submit(SPEC)
    cluster.fail_after_submit = None
    native = cluster.by_job[job.id]
    cluster.extra[job.id] = ["99999"]
    cluster.phases["99999"] = JobStatus(phase=Phase.QUEUED)
    engine.refresh()
    assert engine.get(job.id).native_id == native
    assert cluster.cancelled == ["99999"]


def test_a_failed_search_decides_nothing(engine: Engine, cluster: FakeCluster) -> None:
    cluster.fail_after_submit = CommandTimeout(["sbatch"], 60)
    job = engine.submit(SPEC)
    cluster.fail_after_submit = None
    del cluster.by_job[job.id]  # as if the backend did not have it
    cluster.fail_locate = True
    engine.refresh()
    assert engine.get(job.id).handover is Handover.UNCERTAIN
    assert cluster.submit_calls == 1


def test_unknown_outcomes_end_the_job_after_the_bounded_attempts(
    db_url: str, cluster: FakeCluster
) -> None:
    settings = EngineSettings(max_submit_attempts=2)
    with make_engine(db_url, cluster, settings=settings) as engine:
        cluster.fail_submit = CommandTimeout(["sbatch"], 60)
        job = engine.submit(SPEC)
        for _ in range(3):
            engine.refresh()
        ended = engine.get(job.id)
        assert (ended.phase, ended.detail) == (Phase.ERROR, "SUBMIT_FAILED")
        assert cluster.submit_calls == 2
        assert "2 submissions had no answer" in (ended.message or "")


def test_a_cancel_during_an_uncertain_submission_cancels_what_it_made(
    engine: Engine, cluster: FakeCluster
) -> None:
    cluster.fail_after_submit = CommandTimeout(["sbatch"], 60)
    job = engine.submit(SPEC)
    cluster.fail_after_submit = None
    assert engine.cancel(job.id).phase is Phase.ABORTED
    engine.refresh()
    assert cluster.cancelled == [cluster.by_job[job.id]]
    assert engine.get(job.id).handover is Handover.SUBMITTED


def test_a_vanished_job_is_lost_only_after_misses_and_grace(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, lost_after=0.3, lost_after_misses=3) as engine:
        job = engine.submit(SPEC)
        cluster.vanished.add(job.native_id or "")
        for _ in range(3):
            engine.refresh(force=True)
        missing = engine.get(job.id)
        assert missing.phase is Phase.QUEUED and missing.misses == 3  # not long enough yet
    time.sleep(0.35)
    with make_engine(db_url, cluster, lost_after=0.3, lost_after_misses=3) as engine:
        engine.refresh(force=True)  # a fresh process counts from the stored first miss
        lost = engine.get(job.id)
        assert (lost.phase, lost.detail) == (Phase.ERROR, "LOST")
        assert cluster.cancelled == [job.native_id]  # in case it lives on somewhere


def test_a_job_found_again_starts_its_misses_over(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    cluster.vanished.add(job.native_id or "")
    engine.refresh(force=True)
    assert engine.get(job.id).misses == 1
    cluster.vanished.clear()
    engine.refresh(force=True)
    again = engine.get(job.id)
    assert (again.misses, again.missing_since) == (0, None)


def test_dependents_stay_while_a_parent_cannot_be_cancelled(
    engine: Engine, cluster: FakeCluster
) -> None:
    parent = engine.submit(SPEC)
    child = engine.submit(SPEC.replace(depends_on=[parent.id]))
    backend = engine.backend()
    assert isinstance(backend, FakeBackend)

    def refuse(job: Job) -> None:
        raise BackendError("scancel: cannot reach the controller", retryable=True)

    backend.cancel = refuse  # type: ignore[method-assign]
    with pytest.raises(BackendError):
        engine.cancel(parent.id)
    assert engine.get(child.id).phase is Phase.QUEUED
    assert engine.get(parent.id).phase is Phase.QUEUED


def test_a_new_engine_picks_up_every_active_job(db_url: str, cluster: FakeCluster) -> None:
    with make_engine(db_url, cluster) as first:
        jobs = [first.submit(SPEC) for _ in range(10)]
    for job in jobs[:5]:
        cluster.set(job, Phase.COMPLETED)
    for job in jobs[5:]:
        cluster.set(job, Phase.ERROR, exit_code=1)
    with make_engine(db_url, cluster) as second:
        done = second.wait([job.id for job in jobs], timeout=5)
    assert [job.phase for job in done] == [Phase.COMPLETED] * 5 + [Phase.ERROR] * 5


def test_cancel(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    cancelled = engine.cancel(job.id)
    assert (cancelled.phase, cancelled.detail) == (Phase.ABORTED, "CANCELLED")
    assert cluster.cancelled == [job.native_id]
    with pytest.raises(JobStateError, match="already ended"):
        engine.cancel(job.id)


def test_cancelling_a_waiting_job_asks_no_backend(db_url: str, cluster: FakeCluster) -> None:
    with make_engine(db_url, cluster, max_jobs_in_flight=1) as engine:
        engine.submit(SPEC)
        waiting = engine.submit(SPEC)
        assert engine.cancel(waiting.id).phase is Phase.ABORTED
        assert cluster.cancelled == []


def test_pending_jobs_run_only_when_started(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.create(SPEC, owner="alice", destruction=utcnow() + timedelta(days=1))
    engine.refresh()
    assert engine.get(job.id).phase is Phase.PENDING and cluster.submit_calls == 0
    started = engine.start(job.id)
    assert started.phase is Phase.QUEUED and started.is_submitted
    with pytest.raises(JobStateError):
        engine.start(job.id)


def test_delete_refuses_an_active_job_unless_forced(engine: Engine, cluster: FakeCluster) -> None:
    job = engine.submit(SPEC)
    with pytest.raises(JobStateError, match="cancel it first"):
        engine.delete(job.id)
    engine.delete(job.id, force=True)
    assert cluster.cancelled == [job.native_id]
    assert cluster.freed == [job.id]
    assert engine.store.find() == []
    assert engine.store.events(job.id) == []


def test_wait_returns_at_its_timeout(engine: Engine) -> None:
    job = engine.submit(SPEC)
    [still] = engine.wait([job.id], timeout=0.2)
    assert still.phase is Phase.QUEUED


def test_the_background_loop_moves_jobs_and_wakes_waiters(
    engine: Engine, cluster: FakeCluster
) -> None:
    job = engine.submit(SPEC)
    engine.start_background()
    cluster.set(job, Phase.COMPLETED)
    [done] = engine.wait([job.id], timeout=5)
    engine.stop_background()
    assert done.phase is Phase.COMPLETED
    assert not engine.running


def test_jobs_past_their_destruction_time_are_destroyed(
    engine: Engine, cluster: FakeCluster
) -> None:
    gone: list[str] = []
    engine.hooks.on_delete(lambda job: gone.append(job.id))
    running = engine.submit(SPEC)
    engine.set_destruction(running.id, utcnow() - timedelta(seconds=1))
    kept = engine.create(SPEC, destruction=utcnow() + timedelta(days=1))
    pending = engine.create(SPEC, destruction=utcnow() - timedelta(seconds=1))
    engine.refresh()
    assert gone == [running.id, pending.id] or gone == [pending.id, running.id]
    assert cluster.cancelled == [running.native_id] and cluster.freed == [running.id]
    assert [job.id for job in engine.store.find()] == [kept.id]


def test_a_pending_jobs_spec_can_change_until_it_starts(engine: Engine) -> None:
    job = engine.create(SPEC)
    changed = engine.update_pending(job.id, SPEC.replace(arguments=["--steps", "20"]))
    assert changed.spec.arguments == ["--steps", "20"]
    engine.start(job.id)
    with pytest.raises(JobStateError, match="no longer PENDING"):
        engine.update_pending(job.id, SPEC)


def test_a_stuck_backend_delays_no_other(db_url: str, cluster: FakeCluster) -> None:
    """In the background every backend has a thread: one whose scheduler hangs leaves the
    others' jobs moving, and a hook that hangs leaves polling going."""
    stuck_cluster = FakeCluster()
    options = BackendOptions(min_refresh_interval=0)
    fast = FakeBackend(cluster, "fast", options)
    stuck = FakeBackend(stuck_cluster, "stuck", options)
    release = threading.Event()
    blocked_status = stuck.status

    def hang(jobs: list[Job]) -> dict[str, JobStatus | Missing]:
        release.wait(30)
        return blocked_status(jobs)

    stuck.status = hang  # type: ignore[method-assign,assignment]
    settings = EngineSettings(refresh_interval=0.05, submit_in_background=False)
    backends = {"fast": fast, "stuck": stuck}
    with Engine(Store(db_url), backends, settings=settings, default_backend="fast") as engine:  # type: ignore[arg-type]
        slow_job = engine.submit(SPEC, backend="stuck")
        fast_job = engine.submit(SPEC, backend="fast")
        hooked = threading.Event()

        def hanging_hook(job: Job, old: Phase) -> None:
            if job.id == fast_job.id:
                hooked.set()
                release.wait(30)

        engine.hooks.on_phase_change(hanging_hook)
        engine.start_background()
        try:
            cluster.set(engine.get(fast_job.id), Phase.EXECUTING)
            assert hooked.wait(10), "the fast backend's job was never polled"
            cluster.set(engine.get(fast_job.id), Phase.COMPLETED)
            deadline = time.monotonic() + 10
            while engine.get(fast_job.id).phase is not Phase.COMPLETED:
                assert time.monotonic() < deadline, "polling waited for a stuck backend or hook"
                time.sleep(0.05)
            assert engine.get(slow_job.id).phase is Phase.QUEUED
        finally:
            release.set()
            engine.stop_background()


def test_cancel_of_a_job_jobbridge_gave_up_on_stops_its_native_job(
    db_url: str, cluster: FakeCluster
) -> None:
    with make_engine(db_url, cluster, lost_after=0, lost_after_misses=1) as engine:
        job = engine.submit(SPEC)
        cluster.vanished.add(job.native_id or "")
        engine.refresh(force=True)
        assert engine.get(job.id).detail == "LOST"
        cluster.cancelled.clear()
        with pytest.raises(JobStateError, match="already ended"):
            engine.cancel(job.id)
        assert cluster.cancelled == [job.native_id]


def test_a_running_job_held_again_by_the_system_shows_suspended(
    engine: Engine, cluster: FakeCluster
) -> None:
    job = engine.submit(SPEC)
    cluster.set(job, Phase.EXECUTING)
    engine.refresh(force=True)
    cluster.set(job, Phase.HELD, detail="SPECIAL_EXIT")
    engine.refresh(force=True)
    held = engine.get(job.id)
    assert (held.phase, held.detail) == (Phase.SUSPENDED, "SPECIAL_EXIT")
