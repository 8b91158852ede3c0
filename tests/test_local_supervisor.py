"""The local supervisor: one per jobs directory, never the parent of a job, so that killing
it loses nothing; a job handed over is started exactly once."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends import local_runner
from jobbridge.backends import local_supervisor as sup
from jobbridge.backends.base import BackendContext
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.backends.local_records import RunnerRecord
from tests.test_local_backend import recorded_end


def until(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


def supervisor_pid(jobs_dir: Path) -> int:
    pid_file = jobs_dir / sup.STATE_DIR / sup.PID_FILE
    until(pid_file.exists)
    return int(pid_file.read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_the_supervisor_loses_no_job(
    engine: Engine, isolated_data_dir: Path, tmp_path: Path
) -> None:
    jobs_dir = isolated_data_dir / "jobs"
    gate = tmp_path / "gate"
    wait_for_gate = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    specs = {
        "ok": JobSpec(executable="sh", arguments=["-c", wait_for_gate]),
        "fail": JobSpec(executable="sh", arguments=["-c", f"{wait_for_gate}; exit 5"]),
        "slow": JobSpec(executable="sleep", arguments=["60"], resources={"walltime": 2}),
        "cancelled": JobSpec(executable="sleep", arguments=["60"]),
    }
    running = {name: engine.submit(spec) for name, spec in specs.items()}
    claimed = [Path(job.native_id or "", local_runner.RUNNER_FILE) for job in running.values()]
    until(lambda: all(path.exists() for path in claimed))
    first = supervisor_pid(jobs_dir)
    os.kill(first, signal.SIGSTOP)  # jobs handed over now wait in the spool...
    queued = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 3"]))
    os.kill(first, signal.SIGKILL)  # ...when the supervisor dies
    until(lambda: not alive(first))

    engine.cancel(running["cancelled"].id)
    gate.write_text("")
    ids = [job.id for job in [*running.values(), queued]]
    done = {job.id: job for job in engine.wait(ids, timeout=30)}
    outcomes = {name: (done[job.id].phase, done[job.id].exit_code, done[job.id].detail)
                for name, job in running.items()}  # fmt: skip
    assert outcomes == {
        "ok": (Phase.COMPLETED, 0, None),
        "fail": (Phase.ERROR, 5, None),
        "slow": (Phase.ERROR, 143, "TIMEOUT"),
        "cancelled": (Phase.ABORTED, None, "CANCELLED"),
    }
    assert (done[queued.id].phase, done[queued.id].exit_code) == (Phase.ERROR, 3)
    assert supervisor_pid(jobs_dir) != first  # the spooled job needed a new supervisor
    cancelled = running["cancelled"]
    until(lambda: bool(recorded_end(cancelled.native_id or "", cancelled.id)))
    assert recorded_end(cancelled.native_id or "", cancelled.id)["detail"] == "CANCELLED"


def test_jobs_are_not_children_of_the_supervisor(engine: Engine, isolated_data_dir: Path) -> None:
    job = engine.submit(JobSpec(executable="sleep", arguments=["30"]))
    runner_file = Path(job.native_id or "", local_runner.RUNNER_FILE)
    until(runner_file.exists)
    runner = int(runner_file.read_text().split()[0])
    assert runner != supervisor_pid(isolated_data_dir / "jobs")
    with open(f"/proc/{runner}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    assert int(fields[3]) == runner  # the runner leads a session of its own
    engine.cancel(job.id)


def test_only_one_supervisor_serves_a_directory(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    command = [sys.executable, "-I", "-S", sup.__file__, str(jobs_dir), "2"]
    candidates = [subprocess.Popen(command) for _ in range(4)]
    try:
        pid = supervisor_pid(jobs_dir)
        until(lambda: sum(c.poll() is None for c in candidates) == 1)
        [serving] = [c for c in candidates if c.poll() is None]
        assert serving.pid == pid
        assert sup.is_served(str(jobs_dir / sup.STATE_DIR / sup.WAKE_FIFO))
        serving.wait(timeout=15)  # idle for its two seconds, it leaves
        assert not (jobs_dir / sup.STATE_DIR / sup.PID_FILE).exists()
    finally:
        for candidate in candidates:
            if candidate.poll() is None:
                candidate.kill()
                candidate.wait()


def test_a_job_spooled_twice_runs_once(
    engine: Engine, local_backend: LocalBackend, tmp_path: Path
) -> None:
    counter = tmp_path / "runs"
    spec = JobSpec(executable="sh", arguments=["-c", f"echo run >> {counter}; sleep 0.5"])
    job = engine.submit(spec)
    plans = os.path.join(job.native_id or "", local_runner.PLANS_FILE)
    for again in range(5):  # what a resolved submission or a second supervisor would do
        local_backend.supervisor.enqueue(plans, f"again{again}")
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase is Phase.COMPLETED
    assert counter.read_text() == "run\n"


def test_locate_finishes_a_submission_cut_short(
    engine: Engine, local_backend: LocalBackend
) -> None:
    """The plan was written but the submitter died before queueing the job."""
    job = engine.create(JobSpec(executable="sh", arguments=["-c", "exit 4"]))
    enqueue = local_backend.supervisor.enqueue
    local_backend.supervisor.enqueue = lambda *args, **kwargs: None  # type: ignore[method-assign]
    local_backend.submit(job)
    local_backend.supervisor.enqueue = enqueue  # type: ignore[method-assign]
    assert not (local_backend.context.jobs_dir / sup.SPOOL_DIR / job.id).exists()
    located = local_backend.locate([job])
    assert located.complete and located.found == {job.id: [local_backend._job_dir(job)]}
    native = job.model_copy(update={"native_id": local_backend._job_dir(job)})
    until(lambda: local_backend.status([native])[job.id].phase is Phase.ERROR)
    assert local_backend.status([native])[job.id].exit_code == 4  # type: ignore[union-attr]


def test_closing_lets_the_supervisor_leave_and_a_later_submission_starts_one(
    engine: Engine, local_backend: LocalBackend, isolated_data_dir: Path
) -> None:
    jobs_dir = isolated_data_dir / "jobs"
    [done] = engine.wait([engine.submit(JobSpec(executable="true")).id], timeout=30)
    first = supervisor_pid(jobs_dir)
    local_backend.supervisor.close()
    until(lambda: not alive(first))
    local_backend.supervisor._started_at = float("-inf")  # this process may start one again
    [again] = engine.wait([engine.submit(JobSpec(executable="true")).id], timeout=30)
    assert (done.phase, again.phase) == (Phase.COMPLETED, Phase.COMPLETED)
    assert supervisor_pid(jobs_dir) != first


def test_jobs_handed_over_together_share_all_but_their_own_files(engine: Engine) -> None:
    """A job costs its directory and its two output files; its plan and its runner's
    record are one file each for the whole batch, linked into every job's directory."""
    jobs = engine.submit_many([JobSpec(executable="true")] * 12)
    done = engine.wait([job.id for job in jobs], timeout=30)
    assert {job.phase for job in done} == {Phase.COMPLETED}
    job_dirs = [Path(job.native_id or "") for job in done]
    assert {tuple(sorted(p.name for p in d.iterdir())) for d in job_dirs} == {
        (local_runner.PLANS_FILE, local_runner.RUNNER_FILE, "stderr", "stdout")
    }
    for shared in (local_runner.PLANS_FILE, local_runner.RUNNER_FILE):
        assert len({(d / shared).stat().st_ino for d in job_dirs}) == 1
    # once its runner has left, the record is known by the jobs' links alone
    records = job_dirs[0].parent / sup.STATE_DIR / sup.RECORDS_DIR
    until(lambda: not any(records.iterdir()))


def test_a_job_whose_plans_were_never_linked_is_not_started(
    engine: Engine, local_backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its plan is in the batch's file, but the link that hands it over failed: the
    submission says so, and no runner starts it."""
    marks = [tmp_path / f"ran{n}" for n in range(3)]
    jobs = [engine.create(JobSpec(executable="touch", arguments=[str(m)])) for m in marks]
    refused = local_backend._job_dir(jobs[1])
    real_link = os.link

    def link(source: str, target: str) -> None:
        if target.startswith(refused):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), target)
        real_link(source, target)

    monkeypatch.setattr("jobbridge.backends.local.os.link", link)
    answers = local_backend.submit_many(jobs)
    assert isinstance(answers[1], OSError)
    assert answers[0] == local_backend._job_dir(jobs[0])
    until(lambda: marks[0].exists() and marks[2].exists())
    until(lambda: all(recorded_end(local_backend._job_dir(j), j.id) for j in (jobs[0], jobs[2])))
    assert recorded_end(refused, jobs[1].id) == {}
    assert not marks[1].exists()
    assert not Path(refused, local_runner.RUNNER_FILE).exists()


def test_a_runner_record_with_bad_lines_still_answers_for_the_others() -> None:
    text = (
        b"999999 12\n"
        b"a started 1.5\n"
        b"garbage\n"
        b"b ended {not json\n"
        b'c ended {"exit_code": 0, "detail": "", "started": 1.5, "ended": 2.5}\n'
        b'd ended {"exit_code": 1'  # still being written
    )
    record = RunnerRecord.parse(text)
    assert (record.pid, record.ticks, record.alive) == (999999, 12, False)
    assert record.started == {"a": 1.5}
    assert set(record.ended) == {"c"}


def test_a_job_whose_runner_record_is_unreadable_is_lost_and_blinds_no_other(
    engine: Engine, local_backend: LocalBackend
) -> None:
    first, second = engine.submit_many([JobSpec(executable="true")] * 2)
    done = {job.id: job for job in engine.wait([first.id, second.id], timeout=30)}
    broken = Path(local_backend._job_dir(first))
    (broken / local_runner.RUNNER_FILE).unlink()
    (broken / local_runner.RUNNER_FILE).write_bytes(b"not a runner\n")
    answers = local_backend.status(list(done.values()))
    assert (answers[first.id].phase, answers[first.id].detail) == (Phase.ERROR, "LOST")
    assert answers[second.id].phase is Phase.COMPLETED


def test_a_handover_that_never_reached_the_spool_is_withdrawn(
    engine: Engine, local_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its jobs are not handed over: nothing locates them, and the next handover runs each."""
    jobs = [engine.create(JobSpec(executable="true")) for _ in range(3)]

    def full(plans: str, name: str, *, wake: bool = True) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)

    with monkeypatch.context() as patch:
        patch.setattr(local_backend.supervisor, "enqueue", full)
        assert all(isinstance(a, OSError) for a in local_backend.submit_many(jobs))
        with pytest.raises(OSError):
            local_backend.submit(jobs[0])
    plans = [Path(local_backend._job_dir(job), local_runner.PLANS_FILE) for job in jobs]
    assert not any(path.exists() for path in plans)
    assert local_backend.locate(jobs).found == {}
    assert local_backend.submit_many(jobs) == [local_backend._job_dir(job) for job in jobs]
    until(lambda: all(recorded_end(local_backend._job_dir(j), j.id) for j in jobs))


def test_a_waiting_engine_hears_of_an_ending_before_its_next_polling_tick(
    isolated_data_dir: Path,
) -> None:
    """The runner tells of each outcome through a FIFO that a waiting engine listens on:
    with polling once a minute, a job of half a second is still seen to end."""
    options = LocalOptions(min_refresh_interval=60)
    backend = LocalBackend("local", options, BackendContext(isolated_data_dir / "jobs"))
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    settings = EngineSettings(refresh_interval=60, idle_refresh_interval=60)
    with Engine(store, {"local": backend}, settings=settings) as engine:
        job = engine.submit(JobSpec(executable="sleep", arguments=["0.5"]))
        started = time.monotonic()
        [done] = engine.wait([job.id], timeout=30)
    assert done.phase is Phase.COMPLETED
    assert time.monotonic() - started < 30


def test_a_supervisor_whose_code_was_upgraded_runs_as_the_new_code(
    engine: Engine, isolated_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "installed"
    installed.mkdir()
    for module in (sup, local_runner):
        (installed / Path(module.__file__ or "").name).write_text(
            Path(module.__file__ or "").read_text()
        )
    monkeypatch.setattr("jobbridge.backends.local.SUPERVISOR", installed / "local_supervisor.py")
    jobs_dir = isolated_data_dir / "jobs"
    [before] = engine.wait([engine.submit(JobSpec(executable="true")).id], timeout=30)
    serving = supervisor_pid(jobs_dir)

    # an upgrade replaces the files; this version's runner says, as it loads, that it did
    upgraded = installed / "local_runner.py"
    loaded = tmp_path / "new runner loaded"
    replacement = installed / "local_runner.py.new"
    replacement.write_text(upgraded.read_text() + f"\nopen({str(loaded)!r}, 'w').close()\n")
    replacement.replace(upgraded)
    [after] = engine.wait([engine.submit(JobSpec(executable="true")).id], timeout=30)

    assert (before.phase, after.phase) == (Phase.COMPLETED, Phase.COMPLETED)
    assert loaded.exists(), "the job started under the new code"
    assert supervisor_pid(jobs_dir) == serving, "the same process, run anew"
