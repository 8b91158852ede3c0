"""Handing claimed jobs over off the caller's thread.

Each backend has a queue of claimed jobs and at most ``workers`` threads that hand them
over (fewer if the backend says so: ``handover_threads``); a thread leaves once the queue
has stayed empty for ``LINGER`` seconds (so that jobs submitted one by one do not each start
a thread). A backend that takes many jobs in one step (``batch_submission``) gets whatever
queued meanwhile in one go, so that jobs submitted one by one in quick succession still
share a handover and its one write; from a long queue for any other backend, a thread takes
its share of jobs, submits them one by one, and records what they got in one write. Every
queued job's claim is kept alive from the moment it is queued until its handover is over,
so that no other process takes it for dead meanwhile; a process that dies with jobs in its
queue leaves them claimed, and they are then looked for, never lost.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from jobbridge.backends.base import Backend, NativeDependency
from jobbridge.claims import ClaimKeeper
from jobbridge.job import Job

__all__ = ["Handovers", "Queued"]

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""Jobs handed to a batch-taking backend in one step at most."""
LINGER = 0.05
"""Seconds an idle worker waits for more jobs before it leaves."""
GATHER = 0.005
"""Seconds a worker waits for more jobs to join its step (jobs submitted one by one in a
loop then share a handover, and the one write that records it)."""
MAX_SHARE = 16
"""Jobs one worker takes from a long queue for a backend that takes them one by one; it
records their native ids in one transaction."""


@dataclass(frozen=True)
class Queued:
    """A job claimed under ``token``, to be handed over with these native dependencies."""

    job: Job
    token: str
    native: Sequence[NativeDependency] = ()


class Handovers:
    def __init__(
        self,
        keeper: ClaimKeeper,
        hand: Callable[[Backend, list[Queued]], object],
        workers: int,
    ) -> None:
        self._keeper = keeper
        self._hand = hand
        self._workers = max(1, workers)
        self._queues: dict[str, deque[Queued]] = {}
        self._running: dict[str, int] = {}
        self._threads: set[threading.Thread] = set()
        self._underway = 0
        self._closing = False
        self._lock = threading.Condition()

    def put(self, backend: Backend, queued: Sequence[Queued]) -> None:
        """Queue claimed jobs for handing over; their claims are kept alive from now on."""
        for item in queued:
            self._keeper.hold(item.token, [item.job.id])
        with self._lock:
            self._queues.setdefault(backend.name, deque()).extend(queued)
            self._underway += len(queued)
            self._lock.notify_all()  # a lingering worker takes them
            running = self._running.get(backend.name, 0)
            wanted = min(self._workers_for(backend), len(self._queues[backend.name])) - running
            for _ in range(max(0, wanted)):
                self._running[backend.name] = self._running.get(backend.name, 0) + 1
                thread = threading.Thread(
                    target=self._work,
                    args=(backend,),
                    name=f"jobbridge-submit-{backend.name}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every queued job is handed over; False if ``timeout`` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._underway == 0, timeout)

    def close(self) -> None:
        """Finish the handovers queued (an interrupted one would only be looked for)."""
        self.settle()
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def _workers_for(self, backend: Backend) -> int:
        return min(self._workers, backend.handover_threads or self._workers)

    def _filled(self, name: str, step: int) -> bool:
        return self._closing or len(self._queues[name]) >= step

    def _work(self, backend: Backend) -> None:
        name = backend.name
        while True:
            with self._lock:
                queue = self._queues[backend.name]
                if not queue and not self._closing:
                    self._lock.wait_for(lambda: self._closing or bool(self._queues[name]), LINGER)
                if not queue:
                    self._running[backend.name] -= 1
                    self._threads.discard(threading.current_thread())
                    return
                workers = self._workers_for(backend)
                step = MAX_BATCH if backend.batch_submission else MAX_SHARE * workers
                if len(queue) < step and not self._closing:  # more are likely on the way
                    self._lock.wait_for(partial(self._filled, name, step), GATHER)
                    if not queue:  # another worker took them meanwhile
                        continue
                if backend.batch_submission:
                    size = MAX_BATCH
                else:  # one at a time to the backend, the answers recorded together
                    size = max(1, min(MAX_SHARE, len(queue) // workers))
                taken = [queue.popleft() for _ in range(min(size, len(queue)))]
            try:
                self._hand(backend, taken)
            except Exception:  # their claims die with them: the jobs are looked for, not lost
                log.exception("handing %d jobs to %s failed", len(taken), backend.name)
            finally:
                for item in taken:
                    self._keeper.let_go(item.token, [item.job.id])
                with self._lock:
                    self._underway -= len(taken)
                    if self._underway == 0:
                        self._lock.notify_all()
