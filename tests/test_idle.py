"""An engine running in the background with nothing to do refreshes less and less often, and
still takes up new work at once: a job recorded in the process, or a wake-up for work another
process started."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, Store
from jobbridge.background import IdlePause
from tests.doubles import FakeBackend, FakeCluster

SPEC = JobSpec(executable="/bin/true")
IDLE = EngineSettings(refresh_interval=0.05, idle_refresh_interval=60.0)


class CountingStore(Store):
    """Counts the refresh cycles that ask for waiting jobs (one per cycle of a backend)."""

    cycles = 0

    def waiting(self, backend: str, now: datetime) -> list[Job]:
        self.cycles += 1
        return super().waiting(backend, now)


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def engine_on(store: Store, cluster: FakeCluster, settings: EngineSettings) -> Engine:
    return Engine(store, {"fake": FakeBackend(cluster)}, settings=settings, default_backend="fake")


@pytest.fixture
def idle_engine(store_url: str, cluster: FakeCluster) -> Iterator[Engine]:
    engine = engine_on(Store(store_url), cluster, IDLE)
    engine.start_background()
    # cycles at 0, 0.1, 0.3, 0.7, 1.5, 3.1 s, then 6.3 s: asleep for 3 s from here
    time.sleep(3.3)
    yield engine
    engine.close()


def test_the_pause_doubles_while_idle_up_to_its_longest_and_drops_with_work() -> None:
    pause = IdlePause(tick=0.1, longest=1.0)
    assert [pause.after(False) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert pause.after(True) == 0.1
    assert pause.after(False) == 0.2


def test_an_idle_backend_is_refreshed_less_and_less_often(
    store_url: str, cluster: FakeCluster
) -> None:
    store = CountingStore(store_url)
    settings = EngineSettings(refresh_interval=0.05, idle_refresh_interval=1.0)
    with engine_on(store, cluster, settings) as engine:
        engine.start_background()
        time.sleep(3.0)
        idle_cycles = store.cycles
        engine.submit(SPEC)  # work: back to a cycle every refresh_interval
        time.sleep(1.0)
        busy_cycles = store.cycles - idle_cycles
    # 0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 s: 7 cycles in 3 s (60 at refresh_interval)
    assert idle_cycles <= 9, idle_cycles
    assert busy_cycles >= 8, busy_cycles


def test_a_job_recorded_by_an_idle_engine_is_polled_at_once(
    idle_engine: Engine, cluster: FakeCluster
) -> None:
    job = idle_engine.submit(SPEC)
    assert eventually(lambda: idle_engine.get(job.id).is_submitted, 5)
    cluster.set(idle_engine.get(job.id), Phase.COMPLETED, exit_code=0)
    assert eventually(lambda: idle_engine.get(job.id).phase is Phase.COMPLETED, 1.5)


def test_a_created_job_started_on_an_idle_engine_is_polled_at_once(
    idle_engine: Engine, cluster: FakeCluster
) -> None:
    job = idle_engine.create(SPEC)
    idle_engine.start(job.id)
    assert eventually(lambda: idle_engine.get(job.id).is_submitted, 5)
    cluster.set(idle_engine.get(job.id), Phase.EXECUTING)
    assert eventually(lambda: idle_engine.get(job.id).phase is Phase.EXECUTING, 1.5)


def test_a_wake_up_has_an_idle_engine_poll_work_another_process_handed_over(
    idle_engine: Engine, cluster: FakeCluster, store_url: str
) -> None:
    with engine_on(Store(store_url), cluster, IDLE) as other:  # not in the background
        job = other.submit(SPEC)
        assert other.settle(5)
        cluster.set(other.get(job.id), Phase.COMPLETED, exit_code=0)
    time.sleep(0.3)
    assert idle_engine.get(job.id).phase is Phase.QUEUED, "asleep for the idle pause"
    idle_engine.wake()
    assert eventually(lambda: idle_engine.get(job.id).phase is Phase.COMPLETED, 1.5)
