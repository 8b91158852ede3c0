"""Callbacks around submission, on phase changes and after each batched status query, each
job callback called with the job as the store has it. A callback that raises is logged, handed
to ``on_failure`` (the engine records it as an event of the job, with the exception's text) and
the engine goes on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from jobbridge.job import Job
from jobbridge.phase import Phase

__all__ = [
    "FailureCallback",
    "Hook",
    "Hooks",
    "JobCallback",
    "PhaseCallback",
    "StatusQueryCallback",
]

log = logging.getLogger(__name__)

JobCallback = Callable[[Job], object]
PhaseCallback = Callable[[Job, Phase], object]
"""Called with the job as it is now and the phase it left. For a callback set with
``Hooks.watch``, returning False removes it."""


class Hook(StrEnum):
    BEFORE_SUBMIT = "before-submit"
    AFTER_SUBMIT = "after-submit"
    PHASE_CHANGE = "phase-change"
    DELETE = "delete"


FailureCallback = Callable[[Job, Hook, BaseException], object]
"""Told of a callback that raised: the job, which hook it was, and the exception."""
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
        self.on_failure: FailureCallback | None = None

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
            self._call(Hook.BEFORE_SUBMIT, callback, job)

    def run_after_submit(self, job: Job) -> None:
        for callback in list(self.after_submit):
            self._call(Hook.AFTER_SUBMIT, callback, job)

    def run_deleted(self, job: Job) -> None:
        for callback in list(self.deleted):
            self._call(Hook.DELETE, callback, job)
        with self._lock:
            self._watchers.pop(job.id, None)

    def run_status_query(self, backend: str, seconds: float, failed: bool) -> None:
        for callback in list(self.status_query):
            try:
                callback(backend, seconds, failed)
            except Exception:
                log.exception("status-query callback %r for backend %s failed", callback, backend)

    def run_phase_change(self, job: Job, old: Phase) -> None:
        for callback in list(self.phase_change):
            self._call(Hook.PHASE_CHANGE, callback, job, old)
        with self._lock:
            watchers = list(self._watchers.get(job.id, []))
        for callback in watchers:
            if self._call(Hook.PHASE_CHANGE, callback, job, old) is False:
                self.unwatch(job.id, callback)

    def _call(self, hook: Hook, callback: Callable[..., object], job: Job, *args: object) -> object:
        try:
            return callback(job, *args)
        except Exception as error:
            log.exception("%s callback %r of job %s failed", hook, callback, job.id)
            self._report(job, hook, error)
            return None

    def _report(self, job: Job, hook: Hook, error: BaseException) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(job, hook, error)
        except Exception:
            log.exception("recording the failed %s callback of job %s failed", hook, job.id)
