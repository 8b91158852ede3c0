"""The coordinator: persists, submits, refreshes, cancels, waits, fires hooks, recovers.

Every job is written to the store before any backend sees it. Each refresh cycle, for each
backend on its own, resolves submissions of unknown outcome, hands waiting jobs over
(dependencies met, room under the backend's limits) and asks the backend about all its
active jobs in one batched query, no more often than the backend allows. A failed query never
ends a job: after repeated failures the jobs show UNKNOWN until the backend answers again.
Running in the background, every backend has a thread of its own, so that a slow or dead
cluster delays no other; stage-out and hooks run off the polling path. A new engine on the
same store carries on where another stopped. Of several engines running in the background on
one store (replicas of a service), one at a time polls each backend and one destroys expired
jobs, each under a lease in the store (see ``leases``); any of them may submit. Phase changes
and what follows them are applied in ``changes``; files and outputs are read in ``outputs``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from jobbridge.backends.base import Backend, BackendContext
from jobbridge.backends.registry import create_backend
from jobbridge.background import LOOP_TICK_FLOOR, Background
from jobbridge.changes import PhaseChanges
from jobbridge.config import Config, EngineSettings, SecretsSettings, load_config
from jobbridge.dispatch import Dispatcher, cancel_quietly
from jobbridge.errors import (
    JobbridgeError,
    JobNotFoundError,
    JobStateError,
    SpecError,
    UnknownBackendError,
)
from jobbridge.hooks import Hooks
from jobbridge.job import Job, JobStatus, new_job_id, new_jobs, utcnow
from jobbridge.news import FLOOR, News
from jobbridge.outputs import JobOutputs
from jobbridge.phase import ACTIVE_PHASES, Phase
from jobbridge.polling import Poller
from jobbridge.preparation import (
    Preparer,
    admit,
    check_parents_exist,
    check_stage_out,
    define_workflow,
)
from jobbridge.push import PushAddress, PushEvent, PushReceiver
from jobbridge.secrets import Secrets
from jobbridge.spec import JobSpec
from jobbridge.store import Store
from jobbridge.store.workflows import Workflow, WorkflowStore

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine(JobOutputs):
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend],
        *,
        settings: EngineSettings | None = None,
        default_backend: str = "local",
        hooks: Hooks | None = None,
        results_dir: Path | None = None,
        max_concurrent_submissions: int = 4,
        secrets: SecretsSettings | None = None,
    ) -> None:
        self.store = store
        self.results_dir = results_dir
        self.backends = dict(backends)
        self.settings = settings or EngineSettings()
        self.default_backend = default_backend
        self.hooks = hooks or Hooks()
        self.workflows = WorkflowStore(store)
        self.secrets = Secrets(store, secrets or SecretsSettings())
        self._background = Background(
            store, self.settings, self.refresh_backend, self._destroy_expired
        )
        self._changes = PhaseChanges(
            store,
            self.hooks,
            self._background,
            self.backend,
            lambda backend, job: self._prepare.ended(backend, job),
            results_dir,
        )
        self.hooks.on_failure = self._changes.hook_failed
        move = self._changes.move
        self._prepare = Preparer(store, self.workflows, self.secrets, move, results_dir)
        self._dispatch = Dispatcher(
            store,
            self.hooks,
            move,
            self.settings,
            max_concurrent_submissions=max_concurrent_submissions,
            prepare=self._prepare,
        )
        self._poller = Poller(store, self.settings, move, self._changes.move_many, self.hooks)
        self._pushes = PushReceiver(store, self.backends, move)
        self._backend_locks = {name: threading.Lock() for name in self.backends}
        self._destroy_lock = threading.Lock()
        for backend in list(self.backends.values()):
            backend.attach(self)

    @classmethod
    def from_config(
        cls, config: Config | None = None, *, recorded_only: bool = False, **kwargs: Any
    ) -> Engine:
        """An engine on the configured store and backends. With ``recorded_only``, only the
        configured backends that recorded jobs name are made (enough to look at and wait on
        jobs, and a backend's code is loaded only where its jobs are)."""
        config = config or load_config()
        store = Store(config.database_url)
        wanted = set(store.backend_names()) if recorded_only else set(config.backends)
        context = BackendContext(jobs_dir=config.jobs_dir)
        try:
            backends = {
                name: create_backend(name, backend, context)
                for name, backend in config.backends.items()
                if name in wanted
            }
        except BaseException:
            store.close()
            raise
        return cls(
            store,
            backends,
            settings=config.engine,
            default_backend=config.default_backend,
            results_dir=config.data_dir / "results",
            secrets=config.secrets,
            **kwargs,
        )

    def add_backend(self, backend: Backend) -> None:
        """Serve one more backend (before ``start_background``)."""
        if self.running:
            raise JobStateError("backends are added before the engine runs in the background")
        self.backends[backend.name] = backend
        self._backend_locks.setdefault(backend.name, threading.Lock())
        backend.attach(self)

    def backend(self, name: str | None = None) -> Backend:
        name = name or self.default_backend
        try:
            return self.backends[name]
        except KeyError:
            raise UnknownBackendError(name, self.backends) from None

    # -- creating and starting jobs -----------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        *,
        backend: str | None = None,
        owner: str | None = None,
        background: bool | None = None,
    ) -> Job:
        """Record one job and hand it over as soon as it may run. With ``background`` (the
        default: ``submit_in_background``) it returns once the job is recorded (claimed for
        submission, so durable and found again after any crash); a worker hands it over, at
        most ``max_concurrent_submissions`` at once per backend (see ``settle``). Without,
        it returns the job as its handover left it."""
        if spec.array is not None:
            raise SpecError("this spec describes an array: submit it with submit_array()")
        if background is None:
            background = self.settings.submit_in_background
        return self._add(spec, backend, owner, Phase.QUEUED, background=background)[0]

    def submit_many(
        self,
        specs: Iterable[JobSpec],
        *,
        backend: str | None = None,
        owner: str | None = None,
        wait: bool = True,
    ) -> list[Job]:
        """Record many jobs in one transaction and hand them over, at most
        ``max_concurrent_submissions`` at once per backend. With ``wait`` (the default) it
        returns the jobs once all are handed over; else as soon as they are recorded."""
        target = self.backend(backend)
        specs = [admit(s, owner, target, self.workflows, self.secrets) for s in specs]
        if not specs:
            return []
        parents: set[str] = set()
        for spec in specs:
            if spec.array is not None:
                raise SpecError("submit_many takes single jobs; submit arrays with submit_array()")
            target.check_limits(spec)
            target.check(spec)
            check_stage_out(spec, self.results_dir)
            parents.update(d.job_id for d in spec.depends_on)
        check_parents_exist(self.store, parents)
        now = utcnow()
        jobs = [
            Job.model_construct(
                id=new_job_id(),
                spec=spec,
                backend=target.name,
                owner=owner,
                phase=Phase.QUEUED,
                created=now,
                queued=now,
            )
            for spec in specs
        ]
        added = self._dispatch.add(target, jobs, background=True)
        self._background.wake(target.name)
        if not wait:
            return added
        self.settle()
        return self.store.get_many(job.id for job in added)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the jobs submitted with ``background`` are handed over (or found
        uncertain, or refused); False if ``timeout`` seconds passed first."""
        return self._dispatch.settle(timeout)

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
        job_id: str | None = None,
        also: Callable[[Connection, Sequence[Job]], object] | None = None,
    ) -> Job:
        """Record a PENDING job that runs only once ``start`` is called (UWS semantics).
        ``job_id`` chooses its id (one from ``new_job_id``); ``also``, called with the
        transaction and the job (in a list), writes more rows in it."""
        if spec.array is not None:
            raise SpecError("a PENDING job cannot be an array")
        return self._add(spec, backend, owner, Phase.PENDING, destruction, job_id, also)[0]

    def update_pending(self, job_id: str, spec: JobSpec) -> Job:
        """Give a PENDING job a new spec (UWS parameters change only before it runs)."""
        job = self.store.get(job_id)
        if spec.array is not None:
            raise SpecError("a PENDING job cannot be an array")
        backend = self.backend(job.backend)
        backend.check_limits(spec)
        backend.check(spec)
        check_parents_exist(self.store, (d.job_id for d in spec.depends_on))
        updated = self.store.replace_spec(job_id, spec, Phase.PENDING)
        if updated is None:
            raise JobStateError(f"job {job_id} is no longer PENDING; its spec cannot change")
        return updated

    def set_destruction(self, job_id: str, when: datetime | None) -> Job:
        """When the job and all it left behind are to be destroyed (None: never)."""
        self.store.get(job_id)
        return self.store.update(job_id, destruction=when)

    def start(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.phase is not Phase.PENDING:
            raise JobStateError(f"job {job_id} is {job.phase}; only a PENDING job can be started")
        moved = self.store.move(job_id, Phase.PENDING, Phase.QUEUED, queued=utcnow())
        if moved is None:
            raise JobStateError(f"job {job_id} changed phase while being started")
        self._changes.announce(moved, Phase.PENDING)
        return self._dispatch.hand_over(self.backend(moved.backend), [moved])[0]

    def _add(
        self,
        spec: JobSpec,
        backend_name: str | None,
        owner: str | None,
        phase: Phase,
        destruction: datetime | None = None,
        job_id: str | None = None,
        also: Callable[[Connection, Sequence[Job]], object] | None = None,
        *,
        background: bool = False,
    ) -> list[Job]:
        backend = self.backend(backend_name)
        spec = admit(spec, owner, backend, self.workflows, self.secrets)
        backend.check_limits(spec)
        backend.check(spec)
        check_parents_exist(self.store, (d.job_id for d in spec.depends_on))
        check_stage_out(spec, self.results_dir)
        jobs = new_jobs(spec, backend.name, owner, phase, destruction, job_id)
        if phase is not Phase.QUEUED:
            self.store.add(jobs, also=also)
            return jobs
        added = self._dispatch.add(backend, jobs, background=background)
        self._background.wake(backend.name)
        return added

    # -- refreshing -----------------------------------------------------------------------------

    def refresh(self, *, force: bool = False, hand_over: bool = True) -> None:
        """One cycle: for each backend, resolve, hand over waiting jobs and ask about its
        jobs if due (``force``: whatever its minimum interval or back-off). Without
        ``hand_over`` it only asks: nothing is submitted, resubmitted or destroyed (what
        read-only commands do)."""
        if hand_over:
            self._destroy_expired()
        for backend in self.backends.values():
            self.refresh_backend(backend, force=force, hand_over=hand_over)

    def refresh_backend(
        self, backend: Backend, *, force: bool = False, hand_over: bool = True
    ) -> None:
        """One cycle for one backend; cycles of different backends never wait for each other."""
        with self._backend_locks.setdefault(backend.name, threading.Lock()):
            if hand_over:
                self._dispatch.resolve(backend)
                waiting = self.store.waiting(backend.name, utcnow())
                if waiting:
                    self._dispatch.hand_over(backend, waiting)
            self._poller.poll(backend, force=force)

    def refresh_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """Ask the backends about these jobs alone, now: one query per backend that holds
        some of them, and nothing handed over (what a look at a few jobs needs, however many
        others are active). The ids that no backend was asked about: unknown jobs, jobs not
        handed over, and jobs whose handover is not recorded yet."""
        wanted = list(dict.fromkeys(job_ids))
        asked: set[str] = set()
        for backend in self.backends.values():
            with self._backend_locks.setdefault(backend.name, threading.Lock()):
                asked |= self._poller.poll(backend, force=True, only=wanted)
        return [job_id for job_id in wanted if job_id not in asked]

    def push_to(self, address: PushAddress | None) -> None:
        """Have jobs submitted from now on push to ``address`` (None: stop), on every backend
        whose ``push`` option allows it."""
        for backend in self.backends.values():
            backend.push = address if backend.options.push else None

    def pushed(self, job_id: str, event: PushEvent, index: int | None = None) -> Job | None:
        """A job said (verified, see ``jobbridge.push``) that it started or ended: settle what
        its own records say, at once. The job after, or None if nothing changed."""
        return self._pushes.receive(job_id, event, index)

    def _destroy_expired(self) -> None:
        with self._destroy_lock:
            for job in self.store.expired(utcnow()):
                self._destroy(job)

    def _destroy(self, job: Job) -> None:
        try:
            self.delete(job.id, force=True)
        except JobNotFoundError:
            return  # another engine destroyed it first
        except JobbridgeError as error:
            log.warning("could not destroy job %s: %s", job.id, error)
        else:
            log.info("job %s destroyed: its destruction time had come", job.id)

    # -- acting on jobs -------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Stop a job wherever it is; it ends ABORTED. Its dependents are settled only once
        the backend has taken the cancel. A job that has ended already is refused, after
        making sure that a native job jobbridge gave up on is not left running."""
        for _ in range(5):
            job = self.store.get(job_id)
            if job.phase.is_final:
                if job.is_submitted and job.detail in _ENDED_BY_JOBBRIDGE:
                    cancel_quietly(self.backend(job.backend), job)
                raise JobStateError(f"job {job_id} has already ended ({job.phase})")
            if job.is_submitted:
                self.backend(job.backend).cancel(job)
            aborted = JobStatus(phase=Phase.ABORTED, detail="CANCELLED", message="cancelled")
            moved = self._changes.move(job, Phase.ABORTED, aborted)
            if moved is not None:
                return moved
        raise JobStateError(f"job {job_id} kept changing phase; try again")

    def define_workflow(
        self,
        name: str,
        *,
        owner: str | None = None,
        workspace: str | None = None,
        cache: bool | None = None,
        backend: str | None = None,
    ) -> Workflow:
        """Record a workflow before its jobs: its shared workspace (default: one beside the
        job directories of ``backend``), and whether the job cache serves all its jobs."""
        target = self.backend(backend)
        return define_workflow(self.workflows, target, name, owner, workspace, cache)

    def cancel_workflow(self, workflow: str, *, owner: str | None = None) -> list[Job]:
        """Cancel every active job of a workflow (of ``owner``, if given), each as ``cancel``
        does; the jobs as they are afterwards. A job that ends meanwhile is left as it is."""
        cancelled = []
        for job in self.store.find(workflow=workflow, phases=ACTIVE_PHASES, newest_first=False):
            if owner is not None and job.owner != owner:
                continue
            try:
                cancelled.append(self.cancel(job.id))
            except JobStateError:
                cancelled.append(self.store.get(job.id))
        return cancelled

    def hold(self, job_id: str) -> Job:
        """Keep a queued job from starting; it shows HELD until ``release``."""
        job = self._queued_at_backend(job_id, "hold")
        self.backend(job.backend).hold(job)
        held = JobStatus(phase=Phase.HELD, detail="HELD_BY_USER")
        return self._changes.move(job, Phase.HELD, held) or self.store.get(job_id)

    def release(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.phase is not Phase.HELD or not job.is_submitted:
            raise JobStateError(f"job {job_id} is {job.phase}, not HELD")
        self.backend(job.backend).release(job)
        return self._changes.move(job, Phase.QUEUED, JobStatus(phase=Phase.QUEUED)) or job

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
        if backend is not None and job.is_submitted:
            try:
                backend.free(job)
            except Exception:
                log.warning("could not free what job %s left behind", job_id, exc_info=True)
        self.store.delete(job_id)
        self.hooks.run_deleted(job)

    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        on_progress: Callable[[list[Job]], object] | None = None,
    ) -> list[Job]:
        """Block until no job is active (or ``timeout`` seconds pass); return them as they are."""
        ids = list(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        glance = self.store.glance(ids)
        backends = {backend for backend, _ in glance.values()} & set(self.backends)
        pause = self._pause_for(backends)
        news = News(self.backends[name] for name in backends)
        told: list[str] = []
        early: list[str] = []  # told of before their handover was recorded
        seen = self.store.data_version()
        while True:
            if not self.running:
                if told:
                    early = self.refresh_jobs(told)
                self.refresh()
            glance, seen = self._glance_again(glance, seen)
            if on_progress is not None:
                on_progress(self.store.get_many(ids))
            if not any(phase.is_active for _, phase in glance.values()):
                return self.store.get_many(ids)
            left = pause if deadline is None else min(pause, deadline - time.monotonic())
            if left <= 0:
                return self.store.get_many(ids)
            if news and not self.running:
                # news of a job whose handover a worker is still recording is asked about
                # again soon, not left to the next poll
                early = [i for i in early if i in glance and glance[i][1].is_active]
                told = [*early, *news.wait(min(left, FLOOR) if early else left)]
            else:
                self._changes.wait_for_change(left)

    def _glance_again(
        self, glance: dict[str, tuple[str, Phase]], seen: int | None
    ) -> tuple[dict[str, tuple[str, Phase]], int | None]:
        """The jobs' phases as they are now, read again only if the store changed since
        ``seen``, and only for jobs that had not ended (an ended job's phase is final);
        with the store's version that they reflect."""
        version = self.store.data_version()  # before the read: a later change is seen next
        if version is not None and version == seen:
            return glance, seen
        active = [job_id for job_id, (_, phase) in glance.items() if phase.is_active]
        return {**glance, **self.store.glance(active)}, version

    def _pause_for(self, backends: Iterable[str]) -> float:
        intervals = [self.backends[name].options.min_refresh_interval for name in backends]
        return max(LOOP_TICK_FLOOR, min([self.settings.refresh_interval, *intervals]))

    # -- running in the background --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._background.running

    def start_background(self) -> None:
        """Refresh in threads of their own, one per backend, until ``stop_background``
        (used by the service); hooks and stage-out then run in workers of their own (see
        ``background``)."""
        self._background.start(self.backends)

    def wake(self, backend: str | None = None) -> None:
        """Running in the background: refresh ``backend`` (None: every one) now, not after
        an idle pause (for work that another process started)."""
        self._background.wake(backend)

    def stop_background(self) -> None:
        self._background.stop()

    def close(self) -> None:
        self.stop_background()
        self._dispatch.close()
        for backend in self.backends.values():
            backend.close()
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_ENDED_BY_JOBBRIDGE = frozenset({"LOST", "DEPENDENCY_NEVER_SATISFIED", "STATUS_UNAVAILABLE"})
"""Details of endings that jobbridge decided rather than the scheduler reported."""
