"""Exactly once through faults, against the real Grid Engine test cluster: a submission whose
answer is lost, a bad exit-code file, a job that vanishes from qstat and qacct."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, Job, JobSpec, Phase, Store
from tests.conftest import cluster_env
from tests.faults import (
    BATCH_OPTIONS,
    FaultBin,
    Setup,
    Tally,
    cancel_leftovers,
    describe,
    history,
    marker,
    refresh_until,
    run_real,
    settle,
    sge_native_jobs,
    tag,
    tally,
    wait_until,
)

pytestmark = pytest.mark.sge

TOOLS = ("qsub", "qstat", "qacct", "qdel")
SETTLE = 120.0
"""Longest wait for jobs to reach their end (the cluster may be busy with others' jobs)."""


@pytest.fixture
def mark() -> str:
    return marker()


@pytest.fixture
def since() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def facts() -> dict[str, str]:
    return cluster_env("sge")


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facts: dict[str, str]) -> FaultBin:
    for name in ("SGE_ROOT", "SGE_CELL"):
        monkeypatch.setenv(name, facts[name])
    wrappers = FaultBin(tmp_path / "faults", TOOLS)
    monkeypatch.setenv("PATH", wrappers.path_with_bin())
    return wrappers


@pytest.fixture
def setup(isolated_data_dir: Path, mark: str, facts: dict[str, str]) -> Iterator[Setup]:
    options = {**BATCH_OPTIONS, "sge_root": facts["SGE_ROOT"], "sge_cell": facts["SGE_CELL"]}
    yield Setup(
        isolated_data_dir,
        f"sqlite:///{isolated_data_dir / 'jobbridge.db'}",
        kind="sge",
        options=options,
    )
    cancel_leftovers("sge", mark, facts)


def spec(mark: str, index: int, *command: str) -> JobSpec:
    program, *arguments = command or ("true",)
    return JobSpec(name=f"{mark}-{index}", executable=program, arguments=arguments)


def exactly_once(store: Store, ids: list[str], mark: str, since: datetime) -> Tally:
    counted = tally(store.get_many(ids), sge_native_jobs(since, mark))
    counted.assert_exactly_once()
    return counted


def assert_completed(jobs: list[Job]) -> None:
    wrong = [job for job in jobs if job.phase is not Phase.COMPLETED]
    assert not wrong, f"not COMPLETED:\n{describe(wrong)}"


def test_every_submission_carries_its_mark(setup: Setup, mark: str, since: datetime) -> None:
    with setup.engine() as engine:
        job = engine.submit(spec(mark, 0))
        [done] = settle(engine, [job.id], SETTLE)
    counted = exactly_once(engine.store, [job.id], mark, since)
    assert counted.natives[job.id], "the job's native job was not found by its name"
    assert not counted.untagged, f"native job names without their mark: {counted.untagged}"
    assert all(n.name.endswith("." + tag(done)) for n in counted.natives[job.id])


def test_a_qsub_whose_answer_is_lost_is_found_not_repeated(
    setup: Setup, faults: FaultBin, mark: str, since: datetime
) -> None:
    setup.options["command_timeout"] = 2
    hang = faults.hang_after("qsub", 30, times=2)
    with setup.engine() as engine:
        jobs = [engine.submit(spec(mark, i)) for i in range(2)]
        assert hang.fired == 2, "qsub did not hang after creating the jobs"
        final = [job for job in jobs if job.phase.is_final]
        assert not final, f"an unknown outcome was made final:\n{describe(final)}"
        done = settle(engine, [job.id for job in jobs], SETTLE)
    assert_completed(done)
    assert len(faults.calls("qsub")) == 2, "a submission that took effect was repeated"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def test_a_bad_exit_code_file_is_no_news_for_that_job_only(
    setup: Setup, mark: str, since: datetime
) -> None:
    with setup.engine() as engine:
        jobs = [engine.submit(spec(mark, i)) for i in range(4)]
        wait_until(
            lambda: _all_accounted(since, mark, len(jobs)),
            SETTLE,
            "the jobs did not leave the queue for the accounting",
        )
        backend = engine.backend()
        for job, content in zip(jobs, [b"", b"\x00garbled \xff\n"], strict=False):
            Path(backend.exit_code_path(job)).write_bytes(content)  # type: ignore[attr-defined]
        engine.refresh(force=True)
        after_one = engine.store.get_many([job.id for job in jobs])
        assert_completed(after_one[2:])
        done = settle(engine, [job.id for job in jobs], SETTLE)
    assert_completed(done)
    assert [job.exit_code for job in done[:2]] == [0, 0], "qacct tells the exit code"
    for job in jobs:
        unknown = [p for p in history(engine.store, job.id) if p[0] is Phase.UNKNOWN]
        assert not unknown, f"job {job.id} lost sight: {unknown}"
    exactly_once(engine.store, [job.id for job in jobs], mark, since)


def _all_accounted(since: datetime, mark: str, count: int) -> bool:
    natives = sge_native_jobs(since, mark)
    return len(natives) >= count and all(native.state == "COMPLETED" for native in natives)


@pytest.mark.parametrize(
    ("lost_after", "misses", "interval"),
    [(5, 2, 0.2), (1, 5, 0.5)],
    ids=["the-grace-binds", "the-misses-bind"],
)
def test_a_vanished_job_is_lost_only_after_the_grace_and_the_misses(
    setup: Setup,
    faults: FaultBin,
    mark: str,
    since: datetime,
    lost_after: float,
    misses: int,
    interval: float,
) -> None:
    setup.options.update(
        lost_after=lost_after, lost_after_misses=misses, min_refresh_interval=interval
    )
    seen: list[tuple[float, Job]] = []
    with setup.engine() as first:
        job = first.submit(spec(mark, 0).replace(attributes={"sge.hold": True}))
        refresh_until(
            first, lambda: first.get(job.id).phase is Phase.HELD, 30, "the job never got HELD"
        )
        # old enough that counting the grace from its creation would end it at once
        wait_until(
            lambda: (datetime.now(UTC) - job.created).total_seconds() > lost_after + 1,
            lost_after + 5,
            "",
        )
        # deleted while it waited: it leaves qstat, never reaches qacct, writes no exit code
        run_real(["qdel", job.native_id or "?"])
        gone = time.time()

        def watch(engine: Engine, until: float) -> None:
            while time.time() < until and not engine.get(job.id).phase.is_final:
                engine.refresh()
                seen.append((time.time() - gone, engine.get(job.id)))
                time.sleep(0.2)

        watch(first, gone + lost_after / 2)
    with setup.engine() as fresh:  # what the first one counted must not be forgotten or doubled
        watch(fresh, gone + lost_after + 20)
    early = [
        (round(t, 1), j.phase, j.detail) for t, j in seen if j.phase.is_final and t < lost_after
    ]
    assert not early, f"declared ended before lost_after ({lost_after} s): {early}"
    final = seen[-1][1]
    assert (final.phase, final.detail) == (Phase.ERROR, "LOST"), (
        f"a vanished job should end ERROR/LOST: {describe([final])}\n{history(fresh.store, job.id)}"
    )
    ended_at = next(t for t, j in seen if j.phase.is_final)
    asked = [c for c in faults.calls("qstat") if gone < c.time < gone + ended_at]
    assert len(asked) >= misses, f"LOST after {len(asked)} qstat calls, fewer than {misses}"
    assert ended_at >= (misses - 1) * interval, (
        f"LOST {ended_at:.1f} s after it vanished: too soon for {misses} queries {interval} s apart"
    )
    assert not sge_native_jobs(since, mark), "the job was not really gone"
