"""Handing waiting jobs to their backends, once their dependencies and the backends'
limits allow. A job is claimed in the store first, so that of several engines sharing a
store only one hands it over."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

from jobbridge.backends.base import Backend, NativeDependency
from jobbridge.dependencies import NEVER, Readiness, Verdict, judge
from jobbridge.errors import JobbridgeError, JobNotFoundError
from jobbridge.hooks import Hooks
from jobbridge.job import Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.store import Store

__all__ = ["Dispatcher", "Mover"]

log = logging.getLogger(__name__)

_UNLIMITED = 1_000_000_000

Mover = Callable[[Job, Phase, JobStatus], "Job | None"]
"""Applies a phase change the way the engine does (events, hooks, follow-ups)."""


class Dispatcher:
    def __init__(self, store: Store, hooks: Hooks, move: Mover) -> None:
        self.store = store
        self.hooks = hooks
        self._move = move

    def add(self, backend: Backend, jobs: list[Job]) -> list[Job]:
        """Record new QUEUED jobs and hand over those that may run at once. They are recorded
        as claimed, so no other engine takes them in between."""
        verdict = self._verdict(backend, jobs[0])
        ready = verdict.readiness is Readiness.READY
        go_now = self._fitting(backend, jobs) if ready else []
        self.store.add(jobs, claimed=[job.id for job in go_now])
        handed = {job.id: job for job in self._submit_claimed(backend, go_now, verdict.native)}
        later = [job for job in jobs if job.id not in handed]
        handed.update((job.id, job) for job in self.hand_over(backend, later))
        return [handed.get(job.id, job) for job in jobs]

    def hand_over(self, backend: Backend, waiting: Sequence[Job]) -> list[Job]:
        """Submit what may run now; return the jobs as they are afterwards."""
        results: list[Job] = []
        for group in _array_groups(waiting):
            verdict = self._verdict(backend, group[0])
            if verdict.readiness is Readiness.NEVER:
                results.extend(self._never_runs(job) for job in group)
            elif verdict.readiness is Readiness.READY:
                results.extend(self._submit_group(backend, group, verdict.native))
            else:
                results.extend(group)
        return results

    def _verdict(self, backend: Backend, job: Job) -> Verdict:
        if not job.spec.depends_on:
            return Verdict(Readiness.READY)
        try:
            parents = self.store.get_many(d.job_id for d in job.spec.depends_on)
        except JobNotFoundError:
            return NEVER
        enforced = backend.native_conditions if backend.native_dependencies else frozenset()
        return judge(job, parents, native_conditions=enforced)

    def _never_runs(self, job: Job) -> Job:
        moved = self._move(
            job,
            Phase.ABORTED,
            JobStatus(
                phase=Phase.ABORTED,
                detail="DEPENDENCY_NEVER_SATISFIED",
                message="a job it depends on ended in a way the dependency excludes",
            ),
        )
        return moved or job

    def _submit_group(
        self, backend: Backend, group: list[Job], native: Sequence[NativeDependency]
    ) -> list[Job]:
        fitting = self._fitting(backend, group)
        claimed = [job for job in fitting if self.store.claim_for_submission(job.id)]
        fresh = {job.id: job for job in self._submit_claimed(backend, claimed, native)}
        return [fresh.get(job.id, job) for job in group]

    def _fitting(self, backend: Backend, group: list[Job]) -> list[Job]:
        """What of ``group`` may be handed over now: a whole array the scheduler takes in
        one go (it applies any ``%N`` itself), else as many as the limits leave room for."""
        room = self._room(backend, group[0])
        if _whole_native_array(backend, group) and room >= len(group):
            return group
        return group[: min(room, self._room_in_array(backend, group[0]))]

    def _submit_claimed(
        self, backend: Backend, claimed: list[Job], native: Sequence[NativeDependency] = ()
    ) -> list[Job]:
        """Hand over jobs this engine holds the claim on; a whole array in one go if it can."""
        if not claimed:
            return []
        if _whole_native_array(backend, claimed):
            return self._submit_array(backend, claimed, native)
        return [self._submit_one(backend, job, native) for job in claimed]

    def _room(self, backend: Backend, job: Job) -> int:
        limits = []
        options = backend.options
        if options.max_jobs_in_flight is not None:
            in_flight = self.store.count_in_flight(backend.name)
            limits.append(options.max_jobs_in_flight - in_flight)
        if options.max_cores_in_flight is not None:
            busy = sum(
                j.spec.resources.cores for j in self.store.active(backend.name) if j.is_submitted
            )
            limits.append((options.max_cores_in_flight - busy) // job.spec.resources.cores)
        return max(0, min(limits)) if limits else _UNLIMITED

    def _room_in_array(self, backend: Backend, job: Job) -> int:
        """How many more members of the job's array its ``%N`` lets run."""
        array = job.spec.array
        if job.array_id is None or array is None or array.max_concurrent is None:
            return _UNLIMITED
        in_flight = self.store.count_in_flight(backend.name, job.array_id)
        return max(0, array.max_concurrent - in_flight)

    def _submit_one(
        self, backend: Backend, job: Job, native: Sequence[NativeDependency] = ()
    ) -> Job:
        """Submit a job this engine holds the claim on."""
        self.hooks.run_before_submit(job)
        try:
            native_id = backend.submit(job, native)
        except Exception as error:
            return self._submission_failed(job, error)
        return self.submitted(backend, job, native_id)

    def _submit_array(
        self, backend: Backend, members: list[Job], native: Sequence[NativeDependency]
    ) -> list[Job]:
        for job in members:
            self.hooks.run_before_submit(job)
        try:
            native_ids = backend.submit_array(members, native)
        except Exception as error:
            return [self._submission_failed(job, error) for job in members]
        return [
            self.submitted(backend, job, native)
            for job, native in zip(members, native_ids, strict=True)
        ]

    def submitted(self, backend: Backend, job: Job, native_id: str) -> Job:
        job = self.store.update(job.id, native_id=native_id, submitting_since=None)
        self.hooks.run_after_submit(job)
        if job.phase is Phase.ABORTED:  # cancelled while it was being handed over
            self.cancel_quietly(backend, job)
        return job

    def _submission_failed(self, job: Job, error: Exception) -> Job:
        if isinstance(error, JobbridgeError) and error.retryable:
            log.warning("submitting job %s failed, will retry: %s", job.id, error)
            return self.store.update(
                job.id, submitting_since=None, message=f"submission failed, will retry: {error}"
            )
        if not isinstance(error, JobbridgeError):
            log.error("submitting job %s failed unexpectedly", job.id, exc_info=error)
        status = JobStatus(phase=Phase.ERROR, detail="SUBMIT_FAILED", message=str(error))
        return self._move(
            self.store.update(job.id, submitting_since=None), Phase.ERROR, status
        ) or (self.store.get(job.id))

    def cancel_quietly(self, backend: Backend, job: Job) -> None:
        try:
            backend.cancel(job)
        except Exception:
            log.warning("could not cancel job %s on %s", job.id, backend.name, exc_info=True)

    def recover_interrupted(self, backends: Mapping[str, Backend], submit_timeout: float) -> None:
        before = utcnow() - timedelta(seconds=submit_timeout)
        for job in self.store.interrupted_submissions(before):
            backend = backends.get(job.backend)
            native_id = backend.locate(job) if backend else None
            if native_id is not None:
                log.info("job %s was submitted before an interruption; found it", job.id)
                self.submitted(backend, job, native_id)  # type: ignore[arg-type]
                continue
            status = JobStatus(
                phase=Phase.ERROR,
                detail="SUBMIT_INTERRUPTED",
                message="the submission was interrupted and the backend does not know the job",
            )
            self._move(self.store.update(job.id, submitting_since=None), Phase.ERROR, status)


def _array_groups(jobs: Sequence[Job]) -> list[list[Job]]:
    """Members of one array together (for native submission), every other job alone."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.array_id or job.id, []).append(job)
    return list(groups.values())


def _whole_native_array(backend: Backend, jobs: Sequence[Job]) -> bool:
    array = jobs[0].spec.array
    return (
        backend.native_arrays
        and jobs[0].array_id is not None
        and array is not None
        and len(jobs) == len(array)
    )
