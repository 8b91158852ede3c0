"""Writers of one process take turns on SQLite: every write of many threads lands, a turn
can be taken again by its holder, and a writer never waits for a turn longer than SQLite
would wait for its lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jobbridge import Job, JobSpec, Phase, Store
from jobbridge.job import new_job_id, utcnow
from jobbridge.store.connection import WriteTurns

SPEC = JobSpec(executable="true")


def test_many_threads_writing_at_once_all_land(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")

    def write(_: int) -> list[str]:
        jobs = [
            Job(id=new_job_id(), spec=SPEC, backend="local", phase=Phase.PENDING, created=utcnow())
            for _ in range(40)
        ]
        for job in jobs:
            store.add([job])
        return [job.id for job in jobs]

    with ThreadPoolExecutor(8) as pool:
        written = [job_id for ids in pool.map(write, range(8)) for job_id in ids]
    assert store.count() == len(written) == 320
    store.close()


def test_a_turn_is_taken_again_by_its_holder_and_given_up_once_left() -> None:
    turns = WriteTurns(patience=5)
    with turns, turns:
        pass
    entered = threading.Event()

    def other() -> None:
        with turns:
            entered.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(2), "the turn was not given up"
    thread.join()


def test_a_writer_waits_for_a_turn_no_longer_than_its_patience() -> None:
    turns = WriteTurns(patience=0.2)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with turns:
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(2)
    started = time.monotonic()
    with turns:  # goes on without the turn: SQLite's own lock decides from here
        waited = time.monotonic() - started
    assert 0.15 <= waited < 2, waited
    done.set()
    holder.join()
    with turns:  # the holder gave its turn up; the impatient writer released nothing
        pass
