"""Exactly once through faults on the local backend: a disk that fills while jobs run.

Each job appends one line to a counter file outside the faulty disk, so that how often it
ran is counted by the jobs themselves, not through jobbridge."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends import local_runner
from jobbridge.backends.base import BackendContext
from jobbridge.backends.local import LocalBackend, LocalOptions
from tests.faults.daemons import fill, small_tmpfs
from tests.faults.engines import describe, keep_refreshing, settle
from tests.test_local_supervisor import until

JOBS = 40
"""Enough jobs that their outcomes need more of the runner's record than its first page."""


@pytest.fixture
def full_disk_engine(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    space = contextlib.ExitStack()
    try:
        jobs_dir = space.enter_context(small_tmpfs(tmp_path / "small", size="1m"))
    except PermissionError as error:
        pytest.skip(f"no way to run out of space here: {error}")
    with space:
        backend = LocalBackend("local", LocalOptions(), BackendContext(jobs_dir))
        store = Store(f"sqlite:///{tmp_path / 'jobbridge.db'}")
        with Engine(store, {"local": backend}, settings=EngineSettings()) as engine:
            yield engine, jobs_dir


def test_outcomes_wait_out_a_full_disk_and_none_is_lost(
    full_disk_engine: tuple[Engine, Path], tmp_path: Path
) -> None:
    engine, jobs_dir = full_disk_engine
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    script = f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "$JOBBRIDGE_JOB_ID" >> {runs}'
    jobs = engine.submit_many([JobSpec(executable="sh", arguments=["-c", script])] * JOBS)
    ids = [job.id for job in jobs]
    until(lambda: all((jobs_dir / job_id / local_runner.RUNNER_FILE).exists() for job_id in ids))
    filler = fill(jobs_dir)
    gate.write_text("")
    until(lambda: len(runs.read_text().split()) == JOBS if runs.exists() else False)
    keep_refreshing(engine, 2)
    now = engine.store.get_many(ids)
    assert not [job for job in now if job.phase.is_final and job.phase is not Phase.COMPLETED], (
        f"a full disk ended a job:\n{describe(now)}"
    )
    waiting = [job for job in now if job.phase is Phase.EXECUTING]
    assert waiting, "every outcome was recorded on a full disk: the fault did not bite"
    filler.unlink()
    done = settle(engine, ids, 30)
    assert {job.phase for job in done} == {Phase.COMPLETED}, describe(done)
    assert sorted(runs.read_text().split()) == sorted(ids)  # each job ran once
