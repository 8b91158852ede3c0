"""The coordinator: persists, submits, refreshes, cancels, waits, fires hooks, recovers.

Every job is written to the store before any backend sees it. Each refresh cycle hands
waiting jobs over (dependencies met, room under the backend's limits) and asks every backend
about all its active jobs in one batched query, no more often than the backend allows. A
failed query never ends a job: after repeated failures the jobs show UNKNOWN until the
backend answers again. A new engine on the same store carries on where another stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from jobbridge.backends.base import Backend, BackendContext, NativeDependency, Stream
from jobbridge.backends.registry import create_backend
from jobbridge.config import Config, EngineSettings, load_config
from jobbridge.dependencies import NEVER, Readiness, Verdict, judge
from jobbridge.errors import (
    JobbridgeError,
    JobNotFoundError,
    JobStateError,
    SpecError,
    UnknownBackendError,
)
from jobbridge.hooks import Hooks
from jobbridge.job import Job, JobStatus, new_job_id, utcnow
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.store import Store

__all__ = ["Engine"]

log = logging.getLogger(__name__)

_LOOP_TICK_FLOOR = 0.05


@dataclass
class _PollState:
    next_due: float = 0.0
    failures: int = 0


class Engine:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend],
        *,
        settings: EngineSettings | None = None,
        default_backend: str = "local",
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.backends = dict(backends)
        self.settings = settings or EngineSettings()
        self.default_backend = default_backend
        self.hooks = hooks or Hooks()
        self._polls = {name: _PollState() for name in self.backends}
        self._refresh_lock = threading.Lock()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._loop: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Config | None = None, **kwargs: Any) -> Engine:
        config = config or load_config()
        context = BackendContext(jobs_dir=config.jobs_dir)
        backends = {
            name: create_backend(name, backend, context)
            for name, backend in config.backends.items()
        }
        return cls(
            Store(config.database_url),
            backends,
            settings=config.engine,
            default_backend=config.default_backend,
            **kwargs,
        )

    def backend(self, name: str | None = None) -> Backend:
        name = name or self.default_backend
        try:
            return self.backends[name]
        except KeyError:
            raise UnknownBackendError(name, self.backends) from None

    # -- creating and starting jobs -----------------------------------------------------------

    def submit(self, spec: JobSpec, *, backend: str | None = None, owner: str | None = None) -> Job:
        """Record one job and hand it over as soon as it may run."""
        if spec.array is not None:
            raise SpecError("this spec describes an array: submit it with submit_array()")
        return self._add(spec, backend, owner, Phase.QUEUED)[0]

    def submit_array(
        self, spec: JobSpec, *, backend: str | None = None, owner: str | None = None
    ) -> list[Job]:
        """Record one job per array index, each with its ``array_index``, and hand them over."""
        if spec.array is None:
            raise SpecError("this spec has no array: submit it with submit()")
        return self._add(spec, backend, owner, Phase.QUEUED)

    def create(
        self,
        spec: JobSpec,
        *,
        backend: str | None = None,
        owner: str | None = None,
        destruction: datetime | None = None,
    ) -> Job:
        """Record a PENDING job that runs only once ``start`` is called (UWS semantics)."""
        if spec.array is not None:
            raise SpecError("a PENDING job cannot be an array")
        return self._add(spec, backend, owner, Phase.PENDING, destruction)[0]

    def start(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.phase is not Phase.PENDING:
            raise JobStateError(f"job {job_id} is {job.phase}; only a PENDING job can be started")
        moved = self.store.move(job_id, Phase.PENDING, Phase.QUEUED, queued=utcnow())
        if moved is None:
            raise JobStateError(f"job {job_id} changed phase while being started")
        self._announce(moved, Phase.PENDING)
        return self._hand_over(self.backend(moved.backend), [moved])[0]

    def _add(
        self,
        spec: JobSpec,
        backend_name: str | None,
        owner: str | None,
        phase: Phase,
        destruction: datetime | None = None,
    ) -> list[Job]:
        backend = self.backend(backend_name)
        backend.check(spec)
        self._check_dependencies_exist(spec)
        now = utcnow()
        common: dict[str, Any] = dict(
            spec=spec,
            backend=backend.name,
            owner=owner,
            phase=phase,
            created=now,
            queued=now if phase is Phase.QUEUED else None,
            destruction=destruction,
        )
        if spec.array is None:
            jobs = [Job(id=new_job_id(), **common)]
        else:
            array_id = new_job_id()
            jobs = [
                Job(id=new_job_id(), array_id=array_id, array_index=index, **common)
                for index in spec.array.indices
            ]
        if phase is not Phase.QUEUED:
            self.store.add(jobs)
            return jobs
        # Jobs that may run at once are recorded as claimed, so no other engine takes them.
        verdict = self._verdict(backend, jobs[0])
        ready = verdict.readiness is Readiness.READY
        go_now = self._fitting(backend, jobs) if ready else []
        self.store.add(jobs, claimed=[job.id for job in go_now])
        handed = {job.id: job for job in self._submit_claimed(backend, go_now, verdict.native)}
        later = [job for job in jobs if job.id not in handed]
        handed.update((job.id, job) for job in self._hand_over(backend, later))
        return [handed.get(job.id, job) for job in jobs]

    def _check_dependencies_exist(self, spec: JobSpec) -> None:
        try:
            self.store.get_many(dependency.job_id for dependency in spec.depends_on)
        except JobNotFoundError as error:
            raise SpecError(
                f"depends_on names job {error.job_id!r}, which does not exist"
            ) from None

    # -- handing jobs to backends -------------------------------------------------------------

    def _hand_over(self, backend: Backend, waiting: Sequence[Job]) -> list[Job]:
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
        return judge(job, parents, scheduler_enforces=backend.native_dependencies)

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
        """The jobs of ``group`` that fit under the backend's limits now."""
        room = self._room(backend, group[0])
        return group[:room]

    def _submit_claimed(
        self, backend: Backend, claimed: list[Job], native: Sequence[NativeDependency] = ()
    ) -> list[Job]:
        """Hand over jobs this engine holds the claim on; a whole array in one go if it can."""
        if not claimed:
            return []
        array = claimed[0].spec.array
        native_array = backend.native_arrays and claimed[0].array_id is not None
        if native_array and array is not None and len(claimed) == len(array):
            return self._submit_array(backend, claimed, native)
        return [self._submit_one(backend, job, native) for job in claimed]

    def _room(self, backend: Backend, job: Job) -> int:
        limits = []
        if backend.options.max_jobs_in_flight is not None:
            in_flight = self.store.count_in_flight(backend.name)
            limits.append(backend.options.max_jobs_in_flight - in_flight)
        array = job.spec.array
        if job.array_id is not None and array is not None and array.max_concurrent is not None:
            in_flight = self.store.count_in_flight(backend.name, job.array_id)
            limits.append(array.max_concurrent - in_flight)
        return max(0, min(limits)) if limits else 1_000_000_000

    def _submit_one(
        self, backend: Backend, job: Job, native: Sequence[NativeDependency] = ()
    ) -> Job:
        """Submit a job this engine holds the claim on."""
        self.hooks.run_before_submit(job)
        try:
            native_id = backend.submit(job, native)
        except Exception as error:
            return self._submission_failed(job, error)
        return self._submitted(backend, job, native_id)

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
            self._submitted(backend, job, native)
            for job, native in zip(members, native_ids, strict=True)
        ]

    def _submitted(self, backend: Backend, job: Job, native_id: str) -> Job:
        job = self.store.update(job.id, native_id=native_id, submitting_since=None)
        self.hooks.run_after_submit(job)
        if job.phase is Phase.ABORTED:  # cancelled while it was being handed over
            self._cancel_quietly(backend, job)
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

    def _cancel_quietly(self, backend: Backend, job: Job) -> None:
        try:
            backend.cancel(job)
        except Exception:
            log.warning("could not cancel job %s on %s", job.id, backend.name, exc_info=True)

    # -- refreshing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """One cycle: recover, hand over waiting jobs, ask each due backend about its jobs."""
        with self._refresh_lock:
            self._recover_interrupted()
            for backend in self.backends.values():
                waiting = self.store.find(
                    phases=[Phase.QUEUED], backend=backend.name, submitted=False, newest_first=False
                )
                if waiting:
                    self._hand_over(backend, waiting)
            for name in self.backends:
                self._poll(name)

    def _recover_interrupted(self) -> None:
        before = utcnow() - timedelta(seconds=self.settings.submit_timeout)
        for job in self.store.interrupted_submissions(before):
            backend = self.backends.get(job.backend)
            native_id = backend.locate(job) if backend else None
            if native_id is not None:
                log.info("job %s was submitted before an interruption; found it", job.id)
                self._submitted(backend, job, native_id)  # type: ignore[arg-type]
                continue
            status = JobStatus(
                phase=Phase.ERROR,
                detail="SUBMIT_INTERRUPTED",
                message="the submission was interrupted and the backend does not know the job",
            )
            self._move(self.store.update(job.id, submitting_since=None), Phase.ERROR, status)

    def _poll(self, name: str) -> None:
        backend, state = self.backends[name], self._polls[name]
        now = time.monotonic()
        if now < state.next_due:
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

    def _move(self, job: Job, new: Phase, news: JobStatus) -> Job | None:
        """Apply what a backend (or jobbridge itself) said, if it moves the job forward."""
        if new is job.phase:
            if new is Phase.EXECUTING and job.started is None and news.started is not None:
                return self.store.update(job.id, started=news.started)
            return None
        if not job.phase.can_move_to(new) or _backwards_from_unknown(job, new):
            log.debug("job %s: ignoring %s -> %s", job.id, job.phase, new)
            return None
        fields: dict[str, Any] = {
            "detail": news.detail,
            "message": news.message,
            "exit_code": news.exit_code,
        }
        now = utcnow()
        if new in (Phase.EXECUTING, Phase.SUSPENDED) or new.is_final:
            started = job.started or news.started
            if started is None and new is Phase.EXECUTING:
                started = now
            fields["started"] = started
        if new.is_final:
            fields["ended"] = news.ended or now
        moved = self.store.move(job.id, job.phase, new, time=now, **fields)
        if moved is None:
            return None
        if news.detail == "DEPENDENCY_NEVER_SATISFIED" and moved.is_submitted:
            # the scheduler would keep it pending for ever
            self._cancel_quietly(self.backend(moved.backend), moved)
        self._announce(moved, job.phase)
        return moved

    def _announce(self, job: Job, old: Phase) -> None:
        self.hooks.run_phase_change(job, old)
        with self._changed:
            self._changed.notify_all()

    # -- acting on jobs -------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Stop a job wherever it is; it ends ABORTED."""
        for _ in range(5):
            job = self.store.get(job_id)
            if job.phase.is_final:
                raise JobStateError(f"job {job_id} has already ended ({job.phase})")
            if job.is_submitted:
                self.backend(job.backend).cancel(job)
            aborted = JobStatus(phase=Phase.ABORTED, detail="CANCELLED", message="cancelled")
            moved = self._move(job, Phase.ABORTED, aborted)
            if moved is not None:
                return moved
        raise JobStateError(f"job {job_id} kept changing phase; try again")

    def hold(self, job_id: str) -> Job:
        """Keep a queued job from starting; it shows HELD until ``release``."""
        job = self._queued_at_backend(job_id, "hold")
        self.backend(job.backend).hold(job)
        held = JobStatus(phase=Phase.HELD, detail="HELD_BY_USER")
        return self._move(job, Phase.HELD, held) or self.store.get(job_id)

    def release(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.phase is not Phase.HELD or not job.is_submitted:
            raise JobStateError(f"job {job_id} is {job.phase}, not HELD")
        self.backend(job.backend).release(job)
        return self._move(job, Phase.QUEUED, JobStatus(phase=Phase.QUEUED)) or job

    def _queued_at_backend(self, job_id: str, action: str) -> Job:
        job = self.store.get(job_id)
        if job.phase is not Phase.QUEUED or not job.is_submitted:
            raise JobStateError(f"only a job QUEUED at its backend can be put on {action}")
        return job

    def delete(self, job_id: str, *, force: bool = False) -> None:
        """Forget a job and remove what it left behind; an active one only with ``force``."""
        job = self.store.get(job_id)
        if job.phase.is_active:
            if not force:
                raise JobStateError(f"job {job_id} is {job.phase}; cancel it first or force")
            job = self.cancel(job_id)
        backend = self.backends.get(job.backend)
        if backend is not None:
            try:
                backend.free(job)
            except Exception:
                log.warning("could not free what job %s left behind", job_id, exc_info=True)
        self.store.delete(job_id)

    def read_output(
        self, job_id: str, stream: Stream = "stdout", offset: int = 0, size: int | None = None
    ) -> bytes:
        job = self.store.get(job_id)
        if not job.is_submitted:
            return b""
        return self.backend(job.backend).read_output(job, stream, offset, size)

    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        on_progress: Callable[[list[Job]], object] | None = None,
    ) -> list[Job]:
        """Block until no job is active (or ``timeout`` seconds pass); return them as they are."""
        ids = list(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        jobs = self.store.get_many(ids)
        pause = self._pause_for(jobs)
        while True:
            if not self.running:
                self.refresh()
            jobs = self.store.get_many(ids)
            if on_progress is not None:
                on_progress(jobs)
            if not any(job.phase.is_active for job in jobs):
                return jobs
            left = pause if deadline is None else min(pause, deadline - time.monotonic())
            if left <= 0:
                return jobs
            with self._changed:
                self._changed.wait(left)

    def _pause_for(self, jobs: Sequence[Job]) -> float:
        intervals = [
            self.backends[job.backend].options.min_refresh_interval
            for job in jobs
            if job.backend in self.backends
        ]
        return max(_LOOP_TICK_FLOOR, min([self.settings.refresh_interval, *intervals]))

    # -- running in the background --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.is_alive()

    def start_background(self) -> None:
        """Refresh in a thread of its own until ``stop_background`` (used by the service)."""
        if self.running:
            return
        self._stopping.clear()
        self._loop = threading.Thread(target=self._run, name="jobbridge-engine", daemon=True)
        self._loop.start()

    def stop_background(self) -> None:
        self._stopping.set()
        if self._loop is not None:
            self._loop.join()
            self._loop = None

    def _run(self) -> None:
        tick = self._pause_for([])
        intervals = [b.options.min_refresh_interval for b in self.backends.values()]
        tick = max(_LOOP_TICK_FLOOR, min([tick, *intervals]))
        while not self._stopping.is_set():
            try:
                self.refresh()
            except Exception:
                log.exception("refresh cycle failed")
            self._stopping.wait(tick)

    def close(self) -> None:
        self.stop_background()
        for backend in self.backends.values():
            backend.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _array_groups(jobs: Sequence[Job]) -> list[list[Job]]:
    """Members of one array together (for native submission), every other job alone."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.array_id or job.id, []).append(job)
    return list(groups.values())


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
