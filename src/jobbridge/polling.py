"""Asking backends about their jobs: one batched query per backend, no more often than it
allows, backing off after failures. A failed query never ends a job; after repeated failures
the jobs show UNKNOWN until the backend answers again."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from jobbridge.backends.base import Backend
from jobbridge.config import EngineSettings
from jobbridge.dispatch import Mover
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.store import Store

__all__ = ["Poller"]

log = logging.getLogger(__name__)


@dataclass
class _PollState:
    next_due: float = 0.0
    failures: int = 0


class Poller:
    def __init__(self, store: Store, settings: EngineSettings, move: Mover) -> None:
        self.store = store
        self.settings = settings
        self._move = move
        self._states: dict[str, _PollState] = {}

    def failures(self, backend: str) -> int:
        """Failed queries in a row."""
        return self._states.get(backend, _PollState()).failures

    def poll(self, backend: Backend, *, force: bool = False) -> None:
        """Ask the backend about its active jobs, unless it was asked too recently or is
        being left alone after failures (``force`` asks anyway)."""
        name = backend.name
        state = self._states.setdefault(name, _PollState())
        now = time.monotonic()
        if now < state.next_due and not force:
            return
        jobs = [job for job in self.store.active(name) if job.is_submitted]
        if not jobs:
            return
        try:
            news = backend.status(jobs)
        except Exception as error:
            self._status_failed(backend, state, jobs, error)
            return
        state.failures = 0
        state.next_due = now + backend.options.min_refresh_interval
        for job in jobs:
            if job.id in news:
                self._move(job, news[job.id].phase, news[job.id])

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
        for job in jobs:
            if job.phase is not Phase.UNKNOWN:
                self._move(job, Phase.UNKNOWN, unknown)
