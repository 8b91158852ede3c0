"""Exactly once through faults, on the fake PBS Professional (``tests/fakes/bin/pbspro`` over
fakesched) and the real engine: a submission whose answer is lost, one job's unreadable
exit-code file, a job that vanishes from the scheduler without a trace.

Every test counts, from the fake scheduler's own state and not through jobbridge, the native
jobs that carry each jobbridge job's mark in their name: each job must have exactly one, and
each native job must be the one its jobbridge job records."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.pbs import PbsProBackend
from tests.batch_support import CountingTransport
from tests.fakes.fakesched import ENDED, FakeScheduler

FAKE_BIN = Path(__file__).parent / "fakes" / "bin" / "pbspro"
MARK = re.compile(r"\.(?P<tag>jb-[A-Za-z0-9_]+)(?:\.\d+)?$")
COMMAND_TIMEOUT = 2.0
LOST_AFTER = 2.0
LOST_AFTER_MISSES = 2


@pytest.fixture
def fake_pbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh fake PBS Pro whose tools come first on PATH; what still runs is stopped after."""
    root = tmp_path / "fakesched"
    monkeypatch.setenv("FAKESCHED_DIR", str(root))
    path = [str(FAKE_BIN), str(Path(sys.executable).parent), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    yield root
    if (root / "state.json").exists():
        scheduler = FakeScheduler(str(root))
        with scheduler.session() as tasks:
            scheduler.cancel([task for task in tasks if task.state not in ENDED])


def backend_on(data_dir: Path) -> PbsProBackend:
    options = PbsProBackend.Options.model_validate(
        {
            "min_refresh_interval": 0.2,
            "accounting_delay": 1,
            "command_timeout": COMMAND_TIMEOUT,
            "lost_after": LOST_AFTER,
            "lost_after_misses": LOST_AFTER_MISSES,
        }
    )
    return PbsProBackend("pbspro", options, BackendContext(data_dir / "jobs"))


def engine_on(backend: PbsProBackend, data_dir: Path) -> Engine:
    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    settings = EngineSettings(refresh_interval=0.2, claim_timeout=5, submit_in_background=False)
    return Engine(store, {backend.name: backend}, settings=settings, default_backend=backend.name)


@dataclass
class Counted:
    """The fake scheduler's native jobs, sorted by the jobbridge job whose mark they carry."""

    natives: dict[str, list[str]] = field(default_factory=dict)
    untracked: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> dict[str, list[str]]:
        return {job_id: ids for job_id, ids in self.natives.items() if len(ids) > 1}


def count(root: Path, jobs: list[Job]) -> Counted:
    """Read the fake's state file itself: every job it ever took, ended or not."""
    tasks = json.loads((root / "state.json").read_text())
    by_tag = {f"jb-{job.array_id or job.id}": job for job in jobs}
    counted = Counted({job.id: [] for job in jobs})
    for task in tasks:
        native = f"{task['number']}.{task['extra']['server']}"
        marked = MARK.search(task["name"])
        owner = by_tag.get(marked["tag"]) if marked else None
        if owner is None:
            counted.untracked.append(native)
            continue
        if native not in counted.natives[owner.id]:
            counted.natives[owner.id].append(native)
        if owner.native_id != native:
            counted.untracked.append(native)
    return counted


def assert_exactly_once(root: Path, jobs: list[Job]) -> None:
    counted = count(root, jobs)
    assert not counted.duplicated, f"jobs with more than one native job: {counted.duplicated}"
    missing = [job.id for job in jobs if not counted.natives[job.id]]
    assert not missing, f"jobs without a native job: {missing}"
    assert not counted.untracked, f"native jobs no jobbridge job tracks: {counted.untracked}"


def hanging_qsub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A qsub in front of the fake that lets the real one take the job, then keeps its answer
    past the backend's command timeout; it logs each call."""
    real = FAKE_BIN / "qsub"
    directory = tmp_path / "hanging"
    directory.mkdir()
    calls = directory / "calls"
    script = directory / "qsub"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {shlex.quote(str(calls))}\n'
        f'{shlex.quote(str(real))} "$@"\n'
        f"exec sleep {int(COMMAND_TIMEOUT * 10)}\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_a_submission_whose_answer_is_lost_is_found_not_repeated(
    fake_pbs: Path, isolated_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = hanging_qsub(tmp_path, monkeypatch)
    with engine_on(backend_on(isolated_data_dir), isolated_data_dir) as engine:
        jobs = [
            engine.submit(JobSpec(executable="true", name=f"lost answer {i}")) for i in range(3)
        ]
        assert len(calls.read_text().splitlines()) == 3, "qsub was not called"
        final = [job for job in jobs if job.phase.is_final]
        assert not final, f"an unknown outcome was taken as an ending: {final}"
        done = engine.wait([job.id for job in jobs], timeout=60)
    assert [job.phase for job in done] == [Phase.COMPLETED] * 3, [
        (job.id, job.phase, job.detail, job.message) for job in done
    ]
    assert len(calls.read_text().splitlines()) == 3, "a submission that took effect was repeated"
    assert_exactly_once(fake_pbs, done)


def test_one_unreadable_exit_code_file_holds_up_no_other_job(
    fake_pbs: Path, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without job history PBS Pro forgets ended jobs at once: the exit-code files tell
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "0")
    backend = backend_on(isolated_data_dir)
    with engine_on(backend, isolated_data_dir) as engine:
        jobs = [engine.submit(JobSpec(executable="true", name=f"ends {i}")) for i in range(3)]
        files = [Path(backend.exit_code_path(job)) for job in jobs]
        deadline = time.monotonic() + 30
        while not all(path.exists() for path in files):
            assert time.monotonic() < deadline, "the jobs did not end"
            time.sleep(0.1)
        assert engine.get(jobs[0].id).phase.is_active, "the engine saw the good file first"
        files[0].write_text("x\n")
        done = engine.wait([job.id for job in jobs[1:]], timeout=30)
        assert [job.phase for job in done] == [Phase.COMPLETED] * 2, [
            (job.id, job.phase, job.detail, job.message) for job in done
        ]
        garbled = engine.get(jobs[0].id)
        assert garbled.exit_code is None and garbled.phase is not Phase.COMPLETED, garbled
        assert_exactly_once(fake_pbs, engine.store.get_many([job.id for job in jobs]))


def test_a_vanished_job_is_lost_only_after_its_grace_and_misses(
    fake_pbs: Path, isolated_data_dir: Path
) -> None:
    backend = backend_on(isolated_data_dir)
    counting = CountingTransport(backend.transport)
    backend.transport = counting  # type: ignore[assignment]
    with engine_on(backend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="sleep", arguments=["300"], name="vanishes"))
        deadline = time.monotonic() + 30
        while engine.get(job.id).phase is not Phase.EXECUTING:
            assert time.monotonic() < deadline, f"never ran: {engine.get(job.id)}"
            engine.refresh(force=True)
            time.sleep(0.1)
        assert_exactly_once(fake_pbs, [engine.get(job.id)])
        _vanish(fake_pbs, job.native_id or engine.get(job.id).native_id or "")
        vanished, queries_before = time.monotonic(), _status_queries(counting)
        deadline = vanished + 30
        while not (seen := engine.get(job.id)).phase.is_final:
            assert time.monotonic() < deadline, f"never declared lost: {seen}"
            engine.refresh(force=True)
            time.sleep(0.1)
        waited, misses = time.monotonic() - vanished, _status_queries(counting) - queries_before
    assert (seen.phase, seen.detail) == (Phase.ERROR, "LOST"), seen
    assert waited >= LOST_AFTER, f"declared lost after {waited:.1f} s"
    assert misses >= LOST_AFTER_MISSES, f"declared lost after {misses} status queries"


def _vanish(root: Path, native_id: str) -> None:
    """Take a running job out of the fake scheduler, queue and history alike, killed before
    its script could write an exit code."""
    number = int(native_id.split(".")[0])
    with FakeScheduler(str(root)).session() as tasks:
        for task in [t for t in tasks if t.number == number]:
            if task.pid:
                os.killpg(task.pid, signal.SIGKILL)
            tasks.remove(task)


def _status_queries(counting: CountingTransport) -> int:
    return sum(1 for c in counting.commands if c[0] == "qstat" and "-t" in c)
