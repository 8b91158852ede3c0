"""Many jobs' changes in one transaction, each still a compare-and-set of its own job; run
alike on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from jobbridge import Phase, Store
from jobbridge.claims import new_token
from jobbridge.errors import InvalidTransitionError
from jobbridge.job import Handover, Job, utcnow
from jobbridge.store.batch import Change
from jobbridge.uws.notify import JobListener
from tests.test_leases import eventually
from tests.test_store import fresh, make_job


def test_many_changes_apply_where_each_guard_holds(store: Store) -> None:
    jobs = [make_job(native_id=str(n), backend="fake") for n in range(4)]
    store.add(jobs)
    moved_elsewhere = store.move(jobs[1].id, Phase.QUEUED, Phase.EXECUTING)
    assert moved_elsewhere is not None
    started = utcnow()
    changed = store.move_many(
        [
            Change(jobs[0].id, Phase.QUEUED, Phase.EXECUTING, {"started": started}),
            Change(jobs[1].id, Phase.QUEUED, Phase.ABORTED, {"detail": "CANCELLED"}),
            Change(jobs[2].id, Phase.QUEUED, Phase.ERROR, {"detail": "TIMEOUT", "exit_code": 9}),
            Change(jobs[3].id, Phase.QUEUED, Phase.QUEUED, {"message": "fields only"}),
        ]
    )
    assert set(changed) == {jobs[0].id, jobs[2].id, jobs[3].id}
    assert changed[jobs[0].id].phase is Phase.EXECUTING
    assert changed[jobs[0].id].started == started
    assert (changed[jobs[2].id].detail, changed[jobs[2].id].exit_code) == ("TIMEOUT", 9)
    assert store.get(jobs[1].id).phase is Phase.EXECUTING, "its guard no longer held"
    assert store.get(jobs[3].id).message == "fields only"
    trail = {job.id: [(e.old_phase, e.new_phase) for e in store.events(job.id)] for job in jobs}
    assert trail[jobs[0].id] == [(None, Phase.QUEUED), (Phase.QUEUED, Phase.EXECUTING)]
    assert trail[jobs[1].id] == [(None, Phase.QUEUED), (Phase.QUEUED, Phase.EXECUTING)]
    assert trail[jobs[2].id][-1] == (Phase.QUEUED, Phase.ERROR)
    assert trail[jobs[3].id] == [(None, Phase.QUEUED)], "no event without a phase change"
    assert store.get(jobs[0].id) == changed[jobs[0].id]


def test_jobs_a_batch_returns_are_what_their_rows_now_say(store: Store) -> None:
    """A job this store has parsed (or written) comes back from a batch built from that,
    not read again: another store, which reads the rows, must see the same jobs."""
    jobs = [make_job(backend="fake") for _ in range(3)]
    token = new_token()
    store.add(jobs, claimed=[jobs[0].id, jobs[1].id], token=token)
    assert store.get(jobs[0].id).handover is Handover.CLAIMED
    finished = store.finish_claims({jobs[0].id: (token, "native-0"), jobs[1].id: (token, "x")})
    assert finished[jobs[0].id].handover is Handover.SUBMITTED
    east = timezone(timedelta(hours=2))  # stored as UTC, and so it must come back
    started, ended = utcnow().astimezone(east) - timedelta(seconds=5), utcnow().astimezone(east)
    changed = store.move_many(
        [
            Change(
                jobs[0].id,
                Phase.QUEUED,
                Phase.COMPLETED,
                {"exit_code": 0, "started": started, "ended": ended, "message": "done"},
            ),
            Change(jobs[2].id, Phase.QUEUED, Phase.QUEUED, {"misses": 2}),
        ]
    )
    assert changed[jobs[0].id].ended == ended and changed[jobs[0].id].ended.utcoffset() == (
        timedelta(0)
    )
    with fresh(store) as other:
        for job in [*finished.values(), *changed.values()]:
            latest = changed.get(job.id, job)
            read = other.get(job.id)
            assert read == latest == store.get(job.id)
            assert _exact(read) == _exact(latest)


def _exact(job: Job) -> dict[str, object]:
    """Every field with its type, and every time with its offset: what ``==`` may pass over."""
    return {
        name: (type(value), value.utcoffset() if hasattr(value, "utcoffset") else None, value)
        for name, value in job.__dict__.items()
    }


def test_a_change_under_a_claim_needs_its_token(store: Store) -> None:
    mine, theirs = make_job(), make_job()
    store.add([mine, theirs])
    token = new_token()
    assert store.claim(mine.id, token) and store.claim(theirs.id, new_token())
    changed = store.move_many(
        [
            Change(mine.id, Phase.QUEUED, Phase.ERROR, {"detail": "SUBMIT_FAILED"}, token),
            Change(theirs.id, Phase.QUEUED, Phase.ERROR, {"detail": "SUBMIT_FAILED"}, token),
        ]
    )
    assert set(changed) == {mine.id}
    assert store.get(theirs.id).phase is Phase.QUEUED


def test_a_bad_batch_changes_nothing(store: Store) -> None:
    job = make_job()
    store.add([job])
    with pytest.raises(ValueError, match="one change per job"):
        store.move_many(
            [
                Change(job.id, Phase.QUEUED, Phase.EXECUTING),
                Change(job.id, Phase.QUEUED, Phase.ABORTED),
            ]
        )
    with pytest.raises(InvalidTransitionError):
        store.move_many(
            [
                Change(job.id, Phase.QUEUED, Phase.EXECUTING),
                Change(make_job().id, Phase.COMPLETED, Phase.EXECUTING),
            ]
        )
    assert store.get(job.id).phase is Phase.QUEUED
    assert len(store.events(job.id)) == 1


def test_finishing_many_claims_takes_only_those_still_held(store: Store) -> None:
    jobs = [make_job() for _ in range(3)]
    token = new_token()
    store.add(jobs, claimed=[job.id for job in jobs], token=token)
    store.expire_claims("local", before=utcnow(), not_before=utcnow())  # judged dead
    store.retry_later(jobs[2].id, utcnow(), "back to waiting")  # from UNCERTAIN
    fresh = make_job()
    store.add([fresh], claimed=[fresh.id], token=token)
    done = store.finish_claims({fresh.id: (token, "n1"), jobs[0].id: (token, "n2")})
    assert set(done) == {fresh.id}
    assert done[fresh.id].native_id == "n1"
    assert done[fresh.id].handover is Handover.SUBMITTED
    assert store.get(jobs[0].id).handover is Handover.UNCERTAIN


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_each_changed_job_is_announced_once_committed(store: Store) -> None:
    heard: list[tuple[str, str]] = []
    listener = JobListener(store.url, lambda *said: heard.append(said), lambda: None)
    listener.start()
    try:
        assert listener.listening.wait(20)
        jobs = [make_job(backend="fake") for _ in range(3)]
        store.add(jobs)
        store.move_many(
            [
                Change(jobs[0].id, Phase.QUEUED, Phase.EXECUTING),
                Change(jobs[1].id, Phase.QUEUED, Phase.ABORTED),
                Change(jobs[2].id, Phase.QUEUED, Phase.QUEUED, {"message": "no news"}),
                Change(make_job().id, Phase.QUEUED, Phase.EXECUTING),  # no such job
            ]
        )
        expected = {(jobs[0].id, "EXECUTING"), (jobs[1].id, "ABORTED")}
        assert eventually(lambda: set(heard) == expected)
        assert len(heard) == 2
    finally:
        listener.close()
