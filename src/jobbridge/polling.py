"""Asking backends about their jobs: one batched query per backend, no more often than it
allows, backing off after failures. A failed query never ends a job; after repeated failures
the jobs show UNKNOWN until the backend answers again.

A job that the backend finds nowhere (``Missing``) is not ended on that word: its misses are
counted in the store, and it is declared LOST only after ``lost_after_misses`` queries in a row
and ``lost_after`` seconds since the first miss, both as the store records them, so that a
fresh process grants the whole grace. Its native job is cancelled first, in case it lives on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobbridge.backends.base import Backend, Missing
from jobbridge.config import EngineSettings
from jobbridge.dispatch import Mover
from jobbridge.hooks import Hooks
from jobbridge.job import Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.store import Store

__all__ = ["MOVES_PER_TRANSACTION", "Poller"]

log = logging.getLogger(__name__)

MOVES_PER_TRANSACTION = 200
"""Jobs whose news one transaction applies: a large cluster's answer is applied in parts, so
that a refresh holds only so many changes in memory and the write lock only so long."""


@dataclass
class _PollState:
    next_due: float = 0.0
    failures: int = 0


class Poller:
    def __init__(
        self,
        store: Store,
        settings: EngineSettings,
        move: Mover,
        move_many: Callable[[Sequence[tuple[Job, JobStatus]]], object],
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._move = move
        self._move_many = move_many
        self._hooks = hooks or Hooks()
        self._states: dict[str, _PollState] = {}

    def failures(self, backend: str) -> int:
        """Failed queries in a row."""
        return self._states.get(backend, _PollState()).failures

    def poll(
        self, backend: Backend, *, force: bool = False, only: Sequence[str] | None = None
    ) -> set[str]:
        """Ask the backend about its active jobs, unless it was asked too recently or is
        being left alone after failures (``force`` asks anyway). With ``only``, ask about
        those of them alone, which leaves the backend's next cycle where it was. The ids of
        the jobs it asked about, answered or not (a job whose handover is not recorded yet
        is not asked)."""
        name = backend.name
        state = self._states.setdefault(name, _PollState())
        now = time.monotonic()
        if now < state.next_due and not force:
            return set()
        jobs = self.store.handed_over(name, only)
        if not jobs:
            return set()
        asked = time.perf_counter()
        try:
            news = backend.status(jobs)
        except Exception as error:
            self._hooks.run_status_query(name, time.perf_counter() - asked, True)
            self._status_failed(backend, state, jobs, error)
            return {job.id for job in jobs}
        self._hooks.run_status_query(name, time.perf_counter() - asked, False)
        state.failures = 0
        if only is None:
            state.next_due = now + backend.options.min_refresh_interval
        missing: list[tuple[Job, Missing]] = []
        found_again = []
        said_to: list[tuple[Job, JobStatus]] = []
        for job in jobs:
            said = news.get(job.id)
            if said is None:
                continue
            if isinstance(said, Missing):
                missing.append((job, said))
                continue
            if job.misses:
                found_again.append(job.id)
            said_to.append((job, said))
        for start in range(0, len(said_to), MOVES_PER_TRANSACTION):
            self._move_many(said_to[start : start + MOVES_PER_TRANSACTION])
        if found_again:
            self.store.clear_misses(found_again)
        if missing:
            self._count_misses(backend, missing)
        return {job.id for job in jobs}

    def _count_misses(self, backend: Backend, missing: list[tuple[Job, Missing]]) -> None:
        now = utcnow()
        self.store.count_misses([job.id for job, _ in missing], now)
        options = backend.options
        for job, said in missing:
            misses = job.misses + 1
            since = job.missing_since or now
            if misses < options.lost_after_misses:
                continue
            if (now - since).total_seconds() < options.lost_after:
                continue
            lost = JobStatus(
                phase=Phase.ERROR,
                detail="LOST",
                message=f"{said.reason}; not found by {misses} queries over"
                f" {(now - since).total_seconds():.0f} s",
                stop_native=True,
            )
            self._move(job, Phase.ERROR, lost)

    def _status_failed(
        self, backend: Backend, state: _PollState, jobs: list[Job], error: Exception
    ) -> None:
        state.failures += 1
        pause = max(backend.options.min_refresh_interval, 0.5) * 2 ** (state.failures - 1)
        state.next_due = time.monotonic() + min(pause, self.settings.max_backoff)
        log.warning("status query %d on %s failed: %s", state.failures, backend.name, error)
        if state.failures < self.settings.status_failure_threshold:
            return
        unknown = JobStatus(
            phase=Phase.UNKNOWN,
            detail="STATUS_UNAVAILABLE",
            message=f"{state.failures} status queries in a row failed; the last said: {error}",
        )
        self._move_many([(job, unknown) for job in jobs if job.phase is not Phase.UNKNOWN])
