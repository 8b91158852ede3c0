"""Applying phase changes: what a backend, a job or jobbridge itself said about a job.

A change is applied only if it moves the job forward (a fenced compare-and-set in the store,
one transaction for all that one refresh found), and what follows it follows here: hooks, in
order and never on a polling thread (one that raises leaves an event on its job); stage-out,
in a worker of its own when the engine runs in the background; ended jobs' secrets taken
away; and dependents that can now never run ended and taken off their backends.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobbridge import staging
from jobbridge.backends.base import Backend
from jobbridge.background import Background
from jobbridge.dependencies import met
from jobbridge.dispatch import cancel_quietly
from jobbridge.errors import JobNotFoundError
from jobbridge.hooks import Hook, Hooks
from jobbridge.job import Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.store import Store
from jobbridge.store.batch import Change

__all__ = ["PhaseChanges"]

log = logging.getLogger(__name__)


class PhaseChanges:
    """The engine's phase changes and all that follows them."""

    def __init__(
        self,
        store: Store,
        hooks: Hooks,
        background: Background,
        backend: Callable[[str], Backend],
        ended: Callable[[Backend, Job], None],
        results_dir: Path | None,
    ) -> None:
        self.store = store
        self.hooks = hooks
        self._background = background
        self._backend = backend
        self._ended = ended
        self.results_dir = results_dir
        self._changed = threading.Condition()
        self._staging: set[str] = set()
        self._staging_lock = threading.Lock()

    def move(
        self, job: Job, new: Phase, news: JobStatus, *, token: str | None = None, **extra: Any
    ) -> Job | None:
        """Apply what a backend (or jobbridge itself) said, if it moves the job forward."""
        prepared = self._change_for(job, new, news, token, extra)
        if prepared is None:
            return None
        change, news = prepared
        if change.new is job.phase:
            return self.store.update(job.id, **change.fields)
        moved = self.store.move(
            job.id, job.phase, change.new, time=change.time, token=token, **change.fields
        )
        if moved is not None:
            self._moved(job, moved, news)
        return moved

    def move_many(self, said: Sequence[tuple[Job, JobStatus]]) -> None:
        """``move`` for many jobs at once (what one refresh found): one transaction."""
        prepared: dict[str, tuple[Job, Change, JobStatus]] = {}
        for job, news in said:
            found = self._change_for(job, news.phase, news, None, {})
            if found is not None:
                prepared[job.id] = (job, *found)
        if not prepared:
            return
        changed = self.store.move_many([change for _, change, _ in prepared.values()])
        ended = [moved.id for moved in changed.values() if moved.phase.is_final]
        parents = self.store.having_dependents(ended) if ended else set()
        for job_id, moved in changed.items():
            job, change, news = prepared[job_id]
            if change.new is not job.phase:
                self._moved(job, moved, news, dependents=job_id in parents)

    def _change_for(
        self, job: Job, new: Phase, news: JobStatus, token: str | None, extra: dict[str, Any]
    ) -> tuple[Change, JobStatus] | None:
        """The change that what was said makes to the job, None for none."""
        if new is Phase.HELD and job.phase in (Phase.EXECUTING, Phase.SUSPENDED):
            new = Phase.SUSPENDED  # held again after it ran (a requeue held by the system)
            news = news.model_copy(update={"phase": new})
        if new is job.phase:
            if new is Phase.EXECUTING and job.started is None and news.started is not None:
                return Change(job.id, new, new, {"started": news.started}), news
            if news.detail != job.detail and new is Phase.SUSPENDED:
                detail = {"detail": news.detail, "message": news.message}
                return Change(job.id, new, new, detail), news
            return None
        if not job.phase.can_move_to(new) or _backwards_from_unknown(job, new):
            log.debug("job %s: ignoring %s -> %s", job.id, job.phase, new)
            return None
        if new.is_final and news.stop_native and job.is_submitted:
            # jobbridge ends it, not the scheduler: its native job must not run on untracked
            cancel_quietly(self._backend(job.backend), job)
        fields: dict[str, Any] = {
            "detail": news.detail,
            "message": news.message,
            "exit_code": news.exit_code,
            **extra,
        }
        now = utcnow()
        if new in (Phase.EXECUTING, Phase.SUSPENDED) or new.is_final:
            started = job.started or news.started
            if started is None and new is Phase.EXECUTING:
                started = now
            fields["started"] = started
        if new.is_final:
            fields["ended"] = news.ended or now
        return Change(job.id, job.phase, new, fields, token=token, time=now), news

    def _moved(self, job: Job, moved: Job, news: JobStatus, *, dependents: bool = True) -> None:
        """What follows a job's phase change: hooks, stage-out, its dependents."""
        if news.detail == "DEPENDENCY_NEVER_SATISFIED" and moved.is_submitted:
            # the scheduler would keep it pending for ever
            cancel_quietly(self._backend(moved.backend), moved)
        if moved.phase.is_final and moved.spec.stage_out and moved.is_submitted:
            self._offload_stage_out(moved, job.phase)
        else:
            self.announce(moved, job.phase)
        if moved.phase.is_final:
            self._ended(self._backend(moved.backend), moved)
            if dependents:
                self._settle_dependents(moved.id, moved.phase)

    def _settle_dependents(self, parent_id: str, ending: Phase) -> None:
        """End every job that ``parent_id`` ending in ``ending`` can never let run, and take it
        off its backend (some schedulers would run it, others keep it waiting for ever)."""
        for child, condition in self.store.dependents(parent_id):
            if child.phase.is_final or met(condition, ending):
                continue
            never = JobStatus(
                phase=Phase.ABORTED,
                detail="DEPENDENCY_NEVER_SATISFIED",
                message=f"job {parent_id} ended {ending}, which {condition} excludes",
            )
            self.move(child, Phase.ABORTED, never)  # which takes it off its backend

    def _offload_stage_out(self, job: Job, old: Phase) -> None:
        """Bring outputs back, then announce the ending: in a worker of its own when the
        engine runs in the background, so that polling never waits for a transfer."""
        stager = self._background.stager
        if stager is None:
            self.announce(self._stage_out(job), old)
            return
        with self._staging_lock:
            if job.id in self._staging:
                return
            self._staging.add(job.id)

        def work() -> None:
            try:
                self.announce(self._stage_out(job), old)
            finally:
                with self._staging_lock:
                    self._staging.discard(job.id)

        stager.submit(work)

    def _stage_out(self, job: Job) -> Job:
        """Bring the job's declared outputs back; a failure is recorded, the phase stays."""
        root = str((self.results_dir or Path.cwd()) / job.id)
        try:
            transport, sandbox = self._backend(job.backend).sandbox(job)
            staging.stage_out(transport, sandbox, job.spec.stage_out, root)
        except Exception as error:
            log.warning("stage-out of job %s failed: %s", job.id, error)
            note = f"stage-out failed: {error}"
            return self.store.update(
                job.id, message=f"{job.message}; {note}" if job.message else note
            )
        return job

    def announce(self, job: Job, old: Phase) -> None:
        with self._changed:
            self._changed.notify_all()
        self._background.wake(job.backend)
        hook_runner = self._background.hook_runner
        if hook_runner is None:
            self.hooks.run_phase_change(job, old)
        else:  # in order, and never on a polling thread
            hook_runner.submit(self.hooks.run_phase_change, job, old)

    # -- acting on jobs -------------------------------------------------------------------------

    def hook_failed(self, job: Job, hook: Hook, error: BaseException) -> None:
        """Leave an event on the job whose hook raised (see ``Hooks.on_failure``)."""
        if hook is Hook.DELETE:
            return  # the job and its events are gone; the log has it
        message = f"a {hook} hook raised {type(error).__name__}: {error}"
        with contextlib.suppress(JobNotFoundError):
            self.store.note(job.id, job.phase, "HOOK_FAILED", message)

    def wait_for_change(self, timeout: float) -> None:
        """Block until some job changes phase here, or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait(timeout)


def _backwards_from_unknown(job: Job, new: Phase) -> bool:
    return (
        job.phase is Phase.UNKNOWN
        and job.started is not None
        and new
        in (
            Phase.QUEUED,
            Phase.HELD,
        )
    )
