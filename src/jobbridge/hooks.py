"""Callbacks around submission, on phase changes and after each batched status query. A
callback that raises is logged and the engine goes on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from jobbridge.job import Job
from jobbridge.phase import Phase

__all__ = ["Hooks", "JobCallback", "PhaseCallback", "StatusQueryCallback"]

log = logging.getLogger(__name__)

JobCallback = Callable[[Job], object]
PhaseCallback = Callable[[Job, Phase], object]
"""Called with the job as it is now and the phase it left. For a callback set with
``Hooks.watch``, returning False removes it."""

StatusQueryCallback = Callable[[str, float, bool], object]
"""Called on the polling thread after each batched status query, with the backend's name,
the seconds it took and whether it failed; it should be quick."""

F = TypeVar("F", bound=Callable[..., object])


class Hooks:
    def __init__(self) -> None:
        self.before_submit: list[JobCallback] = []
        self.after_submit: list[JobCallback] = []
        self.phase_change: list[PhaseCallback] = []
        self.deleted: list[JobCallback] = []
        self.status_query: list[StatusQueryCallback] = []
        self._watchers: dict[str, list[PhaseCallback]] = {}
        self._lock = threading.Lock()

    def on_before_submit(self, callback: F) -> F:
        self.before_submit.append(callback)
        return callback

    def on_after_submit(self, callback: F) -> F:
        self.after_submit.append(callback)
        return callback

    def on_phase_change(self, callback: F) -> F:
        self.phase_change.append(callback)
        return callback

    def on_delete(self, callback: F) -> F:
        """Called with the job as it was just before it was deleted (or destroyed)."""
        self.deleted.append(callback)
        return callback

    def on_status_query(self, callback: F) -> F:
        self.status_query.append(callback)
        return callback

    def watch(self, job_id: str, callback: PhaseCallback) -> None:
        """Call ``callback`` on each phase change of one job until it returns False."""
        with self._lock:
            self._watchers.setdefault(job_id, []).append(callback)

    def unwatch(self, job_id: str, callback: PhaseCallback | None = None) -> None:
        with self._lock:
            kept = [c for c in self._watchers.get(job_id, []) if callback not in (None, c)]
            self._watchers[job_id] = kept
            if not kept:
                del self._watchers[job_id]

    def run_before_submit(self, job: Job) -> None:
        for callback in list(self.before_submit):
            _call(callback, job)

    def run_after_submit(self, job: Job) -> None:
        for callback in list(self.after_submit):
            _call(callback, job)

    def run_deleted(self, job: Job) -> None:
        for callback in list(self.deleted):
            _call(callback, job)
        with self._lock:
            self._watchers.pop(job.id, None)

    def run_status_query(self, backend: str, seconds: float, failed: bool) -> None:
        for callback in list(self.status_query):
            _call(callback, backend, seconds, failed)

    def run_phase_change(self, job: Job, old: Phase) -> None:
        for callback in list(self.phase_change):
            _call(callback, job, old)
        with self._lock:
            watchers = list(self._watchers.get(job.id, []))
        for callback in watchers:
            if _call(callback, job, old) is False:
                self.unwatch(job.id, callback)


def _call(callback: Callable[..., object], *args: object) -> object:
    try:
        return callback(*args)
    except Exception:
        log.exception("callback %r failed", callback)
        return None
