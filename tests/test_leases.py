"""Leases in the store (compare-and-set, expiry, hand-over), the engine polling a backend only
under its lease, and the listener that hears other processes' phase changes on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends.base import Missing
from jobbridge.hooks import Hooks
from jobbridge.job import Job, JobStatus, utcnow
from jobbridge.leases import DESTROY_LEASE, LeaseKeeper, backend_lease
from jobbridge.uws.notify import JobListener
from jobbridge.uws.waiting import PhaseWaiters, wait_for
from tests.doubles import FakeBackend, FakeCluster

SPEC = JobSpec(executable="/bin/true")


def eventually(check: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- the store ---------------------------------------------------------------------------------


def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    assert store.take_lease("backend:x", "one", 0.5)
    assert not store.take_lease("backend:x", "two", 0.5)
    assert store.take_lease("backend:x", "one", 0.5), "its holder renews it"
    assert store.leases()["backend:x"][0] == "one"
    assert store.take_lease("other", "two", 30), "leases are independent"
    time.sleep(0.7)
    assert store.take_lease("backend:x", "two", 30), "an expired lease is taken over"
    assert not store.take_lease("backend:x", "one", 30), "its old holder lost it"
    store.release_lease("backend:x", "one")  # not its own: nothing happens
    assert store.leases()["backend:x"][0] == "two"
    store.release_lease("backend:x", "two")
    assert "backend:x" not in store.leases()
    assert store.take_lease("backend:x", "one", 30), "a lease given up is free at once"


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_of_many_racing_for_a_lease_exactly_one_wins(store: Store) -> None:
    for round_ in range(5):
        name = f"race-{round_}"
        start = threading.Barrier(12)

        def take(holder: int, name: str = name, start: threading.Barrier = start) -> bool:
            start.wait()
            return store.take_lease(name, f"holder-{holder}", 30)

        with ThreadPoolExecutor(12) as pool:
            won = list(pool.map(take, range(12)))
        assert won.count(True) == 1, won


def test_a_keeper_takes_over_when_the_holder_stops_renewing(store: Store) -> None:
    dead = LeaseKeeper(store, 1.0, ["backend:x"], holder="dead")
    dead.renew()  # took it once, then its process died: never renewed, never given up
    assert dead.holds("backend:x")
    alive = LeaseKeeper(store, 1.0, ["backend:x"], holder="alive")
    alive.start()
    try:
        assert not alive.holds("backend:x")
        assert eventually(lambda: alive.holds("backend:x"), 10)
        assert store.leases()["backend:x"][0] == "alive"
        assert eventually(lambda: not dead.holds("backend:x"), 2), "the dead one stops counting"
        time.sleep(1.5)  # longer than the duration: renewals keep it
        assert alive.holds("backend:x")
        dead.renew()
        assert not dead.holds("backend:x")
    finally:
        alive.stop()
    assert "backend:x" not in store.leases(), "a keeper that stops gives its leases up"


# -- the engine ----------------------------------------------------------------------------------


class CountingBackend(FakeBackend):
    """A fake backend whose status queries this one object answered are counted."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__(cluster)
        self.queries = 0

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        self.queries += 1
        return super().status(jobs)


@pytest.fixture
def two_engines(
    store_url: str,
) -> Iterator[tuple[Engine, Engine, CountingBackend, CountingBackend, FakeCluster]]:
    cluster = FakeCluster()
    settings = EngineSettings(refresh_interval=0.05, lease_duration=2.0, submit_in_background=False)
    one_backend, two_backend = CountingBackend(cluster), CountingBackend(cluster)
    one = Engine(Store(store_url), {"fake": one_backend}, settings=settings, default_backend="fake")
    two = Engine(Store(store_url), {"fake": two_backend}, settings=settings, default_backend="fake")
    try:
        yield one, two, one_backend, two_backend, cluster
    finally:
        one.close()
        two.close()


def test_one_engine_at_a_time_polls_a_backend_and_another_takes_over(
    two_engines: tuple[Engine, Engine, CountingBackend, CountingBackend, FakeCluster],
) -> None:
    one, two, one_backend, two_backend, cluster = two_engines
    one.start_background()
    assert eventually(lambda: one.store.leases().get(backend_lease("fake"), ("",))[0] != "")
    two.start_background()
    jobs = [two.submit(SPEC) for _ in range(5)]  # any engine submits
    for job in jobs:
        cluster.set(two.get(job.id), Phase.COMPLETED, exit_code=0)
    ids = [job.id for job in jobs]
    assert eventually(lambda: all(j.phase is Phase.COMPLETED for j in one.store.get_many(ids)))
    polled = [b for b in (one_backend, two_backend) if b.queries]
    assert polled == [one_backend], (one_backend.queries, two_backend.queries)
    holder = one.store.leases()
    assert holder[backend_lease("fake")][0] == holder[DESTROY_LEASE][0]
    assert cluster.submit_calls == 5

    one.stop_background()  # gives its leases up: the other carries on at once
    later = two.submit(SPEC)
    cluster.set(two.get(later.id), Phase.COMPLETED, exit_code=0)
    assert eventually(lambda: two.get(later.id).phase is Phase.COMPLETED)
    assert two_backend.queries > 0
    assert cluster.submit_calls == 6


# -- hearing other processes' changes ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_the_listener_hears_phase_changes_and_comes_back_after_its_connection_drops(
    store: Store,
) -> None:
    heard: list[tuple[str, str]] = []
    gaps: list[int] = []
    listener = JobListener(
        store.url, lambda *said: heard.append(said), lambda: gaps.append(1), check_every=1.0
    )
    listener.start()
    try:
        assert listener.listening.wait(20)
        job = Job(id="a" * 32, spec=SPEC, backend="fake", phase=Phase.QUEUED, created=utcnow())
        store.add([job])
        store.move(job.id, Phase.QUEUED, Phase.EXECUTING)
        assert eventually(lambda: heard == [(job.id, "EXECUTING")])
        assert gaps == [1]

        with store.writing() as conn:  # the server drops the listener's connection
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'jobbridge-listen' AND datname = current_database()"
                )
            ).all()
        assert killed == [(True,)]
        assert eventually(lambda: listener.connections == 2 and listener.listening.is_set())
        assert gaps == [1, 1], "every waiter is woken once it listens again"
        store.move(job.id, Phase.EXECUTING, Phase.COMPLETED)
        assert eventually(lambda: heard == [(job.id, "EXECUTING"), (job.id, "COMPLETED")])
        store.delete(job.id)
        assert eventually(lambda: heard[-1] == (job.id, "DELETED"))
    finally:
        listener.close()
    assert not listener.listening.is_set()


def test_waiters_are_woken_by_one_job_or_all_at_once_and_once_per_change() -> None:
    async def scenario() -> tuple[bool, bool, bool, bool, bool]:
        waiters = PhaseWaiters(asyncio.get_running_loop(), Hooks())
        with waiters.watching("a") as a, waiters.watching("b") as b:
            await asyncio.to_thread(waiters.poke, "a", "EXECUTING")
            woke_a = await wait_for(a, 5)
            woke_b_early = b.is_set()
            a.clear()
            await asyncio.to_thread(waiters.poke, "a", "EXECUTING")  # the same change, heard again
            echo = await wait_for(a, 0.3)
            await asyncio.to_thread(waiters.poke, "a", "COMPLETED")
            next_change = await wait_for(a, 5)
            a.clear()
            await asyncio.to_thread(waiters.poke_all)
            both = await wait_for(a, 5) and await wait_for(b, 5)
        waiters.close()
        return woke_a, woke_b_early, echo, next_change, both

    woke_a, woke_b_early, echo, next_change, both = asyncio.run(scenario())
    assert woke_a and not woke_b_early and not echo and next_change and both
