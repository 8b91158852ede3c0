"""Handing waiting jobs to their backends, once their dependencies and the backends'
limits allow, exactly once.

A job is claimed in the store under a fencing token before its backend sees it, and the
claim is kept alive by a heartbeat while the submission runs; only the holder of a live
claim may record the native id. A submission that brings back no answer (a timeout, a
broken connection, a killed process) leaves the job UNCERTAIN: it is never retried blindly.
``resolve`` then searches the backend for the job's mark: a native job found is adopted (and
any duplicate cancelled); one that the backend certainly does not know after its delay is
submitted again, a bounded number of times. Only a definite refusal ends a job
SUBMIT_FAILED; passing failures are retried with back-off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from jobbridge.backends.base import Backend, NativeDependency
from jobbridge.claims import ClaimKeeper, new_token
from jobbridge.config import EngineSettings
from jobbridge.dependencies import NEVER, Readiness, Verdict, judge
from jobbridge.errors import JobNotFoundError, SubmitOutcome, submit_outcome
from jobbridge.handovers import Handovers, Queued
from jobbridge.hooks import Hooks
from jobbridge.job import Handover, Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.preparation import Prepared, preparation_failure
from jobbridge.store import Store

__all__ = ["Dispatcher", "Mover", "cancel_quietly"]

log = logging.getLogger(__name__)

_UNLIMITED = 1_000_000_000


class Mover(Protocol):
    """Applies a phase change the way the engine does (events, hooks, follow-ups); with a
    ``token``, only while the job is still claimed under it. ``fields`` are stored too."""

    def __call__(
        self, job: Job, new: Phase, news: JobStatus, *, token: str | None = None, **fields: Any
    ) -> Job | None: ...


class Preparing(Protocol):
    """Readies a claimed job for its backend (see ``preparation.Preparer``)."""

    def __call__(self, backend: Backend, job: Job, token: str) -> Prepared: ...


_RELEASED: dict[str, Any] = {
    "handover": Handover.WAITING.value,
    "claim_token": None,
    "submitting_since": None,
}


class Dispatcher:
    def __init__(
        self,
        store: Store,
        hooks: Hooks,
        move: Mover,
        settings: EngineSettings,
        *,
        max_concurrent_submissions: int = 4,
        prepare: Preparing | None = None,
    ) -> None:
        self.store = store
        self.hooks = hooks
        self._prepare = prepare
        self.settings = settings
        self._move = move
        self._keeper = ClaimKeeper(store, settings.claim_timeout / 4)
        self._background = Handovers(self._keeper, self._hand, max_concurrent_submissions)

    def add(self, backend: Backend, jobs: list[Job], *, background: bool = False) -> list[Job]:
        """Record new QUEUED jobs and hand over those that may run at once. They are recorded
        as claimed, so no other engine takes them in between. With ``background``, the
        handing over is left to at most ``max_concurrent_submissions`` workers per backend
        and the jobs come back as recorded: claimed, their claims kept alive meanwhile."""
        if jobs[0].array_id is not None or len(jobs) == 1:
            verdict = self._verdict(backend, jobs[0])
            ready = verdict.readiness is Readiness.READY
            go_now = self._fitting(backend, jobs) if ready else []
            native = verdict.native
        else:  # jobs of their own: those without parents may go at once
            go_now = self._fitting_each(backend, [job for job in jobs if not job.spec.depends_on])
            native = ()
        token = new_token()
        self.store.add(jobs, claimed=[job.id for job in go_now], token=token)
        go_now = [_claimed(job) for job in go_now]
        if background and go_now and not _whole_native_array(backend, go_now):
            self._background.put(backend, [Queued(job, token, native) for job in go_now])
            handed = {job.id: job for job in go_now}
        else:
            handed = {job.id: job for job in self._submit_claimed(backend, go_now, token, native)}
        later = [job for job in jobs if job.id not in handed]
        if later:
            handed.update((job.id, job) for job in self.hand_over(backend, later))
        return [handed.get(job.id, job) for job in jobs]

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until every handover left to the background is done; False on timeout."""
        return self._background.settle(timeout)

    def close(self) -> None:
        """Finish the handovers under way (an interrupted one would only be looked for)."""
        self._background.close()

    def _hand(self, backend: Backend, queued: list[Queued]) -> None:
        """Hand over jobs taken from the background queue."""
        if len(queued) == 1 or any(item.native for item in queued):
            for item in queued:
                self._submit_one(backend, item.job, item.token, item.native)
            return
        self._submit_batch(backend, queued)

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
        token = new_token()
        claimed = [_claimed(job) for job in fitting if self.store.claim(job.id, token)]
        fresh = {job.id: job for job in self._submit_claimed(backend, claimed, token, native)}
        return [fresh.get(job.id, job) for job in group]

    def _fitting(self, backend: Backend, group: list[Job]) -> list[Job]:
        """What of ``group`` may be handed over now: a whole array the scheduler takes in
        one go (it applies any ``%N`` itself), else as many as the limits leave room for."""
        room = self._room(backend, group[0])
        if _whole_native_array(backend, group) and room >= len(group):
            return group
        return group[: min(room, self._room_in_array(backend, group[0]))]

    def _fitting_each(self, backend: Backend, jobs: list[Job]) -> list[Job]:
        """The first of ``jobs`` that the backend's limits leave room for, in order."""
        options = backend.options
        if options.max_cores_in_flight is None:
            return jobs[: self._room(backend, jobs[0])] if jobs else []
        slots = _UNLIMITED
        if options.max_jobs_in_flight is not None:
            slots = options.max_jobs_in_flight - self.store.count_in_flight(backend.name)
        cores = options.max_cores_in_flight - sum(
            j.spec.resources.cores
            for j in self.store.active(backend.name)
            if j.handover is not Handover.WAITING
        )
        fitting = []
        for job in jobs:
            need = job.spec.resources.cores
            if slots <= 0 or need > cores:
                break
            fitting.append(job)
            slots -= 1
            cores -= need
        return fitting

    def _room(self, backend: Backend, job: Job) -> int:
        limits = []
        options = backend.options
        if options.max_jobs_in_flight is not None:
            in_flight = self.store.count_in_flight(backend.name)
            limits.append(options.max_jobs_in_flight - in_flight)
        if options.max_cores_in_flight is not None:
            busy = sum(
                j.spec.resources.cores
                for j in self.store.active(backend.name)
                if j.handover is not Handover.WAITING
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

    # -- submitting claimed jobs ------------------------------------------------------------

    def _submit_claimed(
        self,
        backend: Backend,
        claimed: list[Job],
        token: str,
        native: Sequence[NativeDependency] = (),
    ) -> list[Job]:
        """Hand over jobs claimed under ``token``; a whole array in one go if it can."""
        if not claimed:
            return []
        with self._keeper.holding(token, [job.id for job in claimed]):
            if _whole_native_array(backend, claimed):
                return self._submit_array(backend, claimed, token, native)
            if backend.batch_submission and len(claimed) > 1 and not native:
                return self._submit_batch(backend, [Queued(job, token) for job in claimed])
            return [self._submit_one(backend, job, token, native) for job in claimed]

    def _submit_one(
        self, backend: Backend, job: Job, token: str, native: Sequence[NativeDependency]
    ) -> Job:
        self.hooks.run_before_submit(job)
        ready = self._ready(backend, job, token)
        if isinstance(ready, Job):
            return ready
        return self._submit_prepared(backend, Queued(job, token, native), ready)

    def _ready(self, backend: Backend, job: Job, token: str) -> Prepared | Job:
        """What the backend is to be handed for ``job``; or the job as it is now if it needs
        no backend (served from the cache) or its preparation failed."""
        if self._prepare is None:
            return Prepared(job)
        try:
            prepared = self._prepare(backend, job, token)
        except Exception as error:
            return self._not_submitted(backend, job, token, preparation_failure(error))
        return prepared if prepared.done is None else prepared.done

    def _submit_array(
        self,
        backend: Backend,
        members: list[Job],
        token: str,
        native: Sequence[NativeDependency],
    ) -> list[Job]:
        for job in members:
            self.hooks.run_before_submit(job)
        handed = list(members)
        if self._prepare is not None:  # no cache nor secrets for arrays: only the workspace
            try:
                handed = [self._prepare(backend, job, token).job for job in members]
            except Exception as error:
                failure = preparation_failure(error)
                return [self._not_submitted(backend, job, token, failure) for job in members]
        try:
            native_ids = backend.submit_array(handed, native)
        except Exception as error:
            return [self._not_submitted(backend, job, token, error) for job in members]
        return [
            self._submitted(backend, job, token, native_id)
            for job, native_id in zip(members, native_ids, strict=True)
        ]

    def _submit_batch(self, backend: Backend, queued: list[Queued]) -> list[Job]:
        """Hand many jobs over in one step, and record what they got in one transaction."""
        results: dict[str, Job] = {}
        batch: list[tuple[Queued, Job]] = []
        for item in queued:
            self.hooks.run_before_submit(item.job)
            ready = self._ready(backend, item.job, item.token)
            if isinstance(ready, Job):
                results[item.job.id] = ready
            elif ready.secrets is not None:  # handed over with them, on its own
                results[item.job.id] = self._submit_prepared(backend, item, ready)
            else:
                batch.append((item, ready.job))
        try:
            answers = backend.submit_many([handed for _, handed in batch])
        except Exception as error:
            answers = [error] * len(batch)
        got: dict[str, tuple[str, str]] = {}
        for (item, _), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                results[item.job.id] = self._not_submitted(backend, item.job, item.token, answer)
            else:
                got[item.job.id] = (item.token, answer)
        done = self.store.finish_claims(got) if got else {}
        for item, _ in batch:
            if item.job.id in got:
                native_id = got[item.job.id][1]
                results[item.job.id] = self._finished(
                    backend, item.job, done.get(item.job.id), native_id
                )
        return [results[item.job.id] for item in queued]

    def _submit_prepared(self, backend: Backend, item: Queued, ready: Prepared) -> Job:
        try:
            if ready.secrets is not None:
                native_id = backend.submit_with_secrets(ready.job, ready.secrets, item.native)
            else:
                native_id = backend.submit(ready.job, item.native)
        except Exception as error:
            return self._not_submitted(backend, item.job, item.token, error)
        return self._submitted(backend, item.job, item.token, native_id)

    def _submitted(self, backend: Backend, job: Job, token: str, native_id: str) -> Job:
        return self._finished(
            backend, job, self.store.finish_claim(job.id, token, native_id), native_id
        )

    def _finished(self, backend: Backend, job: Job, done: Job | None, native_id: str) -> Job:
        """After the native id was recorded (``done``), or found too late to record (None)."""
        if done is None:
            return self._late_answer(backend, job, native_id)
        self.hooks.run_after_submit(done)
        if done.phase.is_final:  # cancelled while it was being handed over
            self._cancel_native(backend, done, native_id, "it ended while being handed over")
        return done

    def _late_answer(self, backend: Backend, job: Job, native_id: str) -> Job:
        """A submission answered after its claim was judged dead. Adopt its native job if
        the job still has none and nobody else is submitting it; else cancel it."""
        try:
            current = self.store.get(job.id)
        except JobNotFoundError:
            self._cancel_native(backend, job, native_id, "the job was deleted meanwhile")
            return job
        if current.native_id == native_id:
            return current
        adopted = None
        if current.native_id is None and current.handover is not Handover.CLAIMED:
            adopted = self.store.adopt(job.id, native_id)
        if adopted is None:
            self._cancel_native(
                backend, current, native_id, "it answered too late: the job was handed over anew"
            )
            return self.store.get(job.id)
        self._note(adopted, "ADOPTED", f"a late answer brought native job {native_id}")
        self.hooks.run_after_submit(adopted)
        if adopted.phase.is_final:
            self._cancel_native(backend, adopted, native_id, "the job had ended meanwhile")
        return adopted

    def _not_submitted(self, backend: Backend, job: Job, token: str, error: Exception) -> Job:
        outcome = submit_outcome(error)
        if outcome is SubmitOutcome.UNKNOWN:
            return self._uncertain(backend, job, token, error)
        if outcome is SubmitOutcome.NOT_MADE:
            return self._retry_later(backend, job, token, error)
        log.warning("%s refused job %s: %s", backend.name, job.id, error)
        status = JobStatus(phase=Phase.ERROR, detail="SUBMIT_FAILED", message=str(error))
        moved = self._move(job, Phase.ERROR, status, token=token, **_RELEASED)
        if moved is None:  # cancelled meanwhile: give the claim back, nothing was created
            self.store.retry_later(job.id, utcnow(), f"submission refused: {error}", token=token)
        return moved or self.store.get(job.id)

    def _uncertain(self, backend: Backend, job: Job, token: str, error: Exception) -> Job:
        log.warning(
            "job %s: submission to %s has an unknown outcome: %s", job.id, backend.name, error
        )
        message = f"submission outcome unknown ({error}); looking for it on {backend.name}"
        judged = utcnow() + timedelta(seconds=backend.search_delay)
        done = self.store.make_uncertain(job.id, token, judged, message)
        if done is None:
            return self.store.get(job.id)
        self._note(done, "SUBMISSION_UNCERTAIN", message)
        return done

    def _retry_later(self, backend: Backend, job: Job, token: str, error: Exception) -> Job:
        pause = min(
            self.settings.max_backoff,
            self.settings.retry_delay * 2 ** max(0, job.attempts - 1),
        )
        message = f"submission failed for a passing reason, will retry in {pause:g} s: {error}"
        log.warning("job %s on %s: %s", job.id, backend.name, message)
        done = self.store.retry_later(
            job.id, utcnow() + timedelta(seconds=pause), message, token=token
        )
        return done or self.store.get(job.id)

    # -- resolving submissions of unknown outcome ----------------------------------------

    def resolve(self, backend: Backend) -> None:
        """Judge dead claims uncertain, then search the backend for every uncertain
        submission in one go: adopt what it has; resubmit what it certainly lacks."""
        now = utcnow()
        self.store.expire_claims(
            backend.name,
            before=now - timedelta(seconds=self.settings.claim_timeout),
            not_before=now + timedelta(seconds=backend.search_delay),
        )
        pending = self.store.uncertain(backend.name)
        if not pending:
            return
        try:
            located = backend.locate([job for job, _ in pending])
        except Exception as error:
            log.warning(
                "searching %s for %d submissions failed: %s", backend.name, len(pending), error
            )
            return
        for job, judged in pending:
            found = located.found.get(job.id)
            if found:
                self._adopt(backend, job, found)
            elif located.complete and (judged is None or judged <= now):
                self._absent(job)

    def _adopt(self, backend: Backend, job: Job, found: list[str]) -> None:
        keep, *duplicates = sorted(found, key=_submission_order)
        adopted = self.store.adopt(job.id, keep)
        if adopted is None:
            return
        log.info("job %s: its submission had reached %s as %s", job.id, backend.name, keep)
        self._note(adopted, "ADOPTED", f"the backend had it as native job {keep}")
        self.hooks.run_after_submit(adopted)
        if adopted.phase.is_final:
            self._cancel_native(backend, adopted, keep, "the job had ended meanwhile")
        for native_id in duplicates:
            self._cancel_native(backend, adopted, native_id, f"a duplicate of {keep}")

    def _absent(self, job: Job) -> None:
        if job.phase.is_final:
            self.store.settle_unsubmitted(job.id)
            return
        if job.attempts >= self.settings.max_submit_attempts:
            status = JobStatus(
                phase=Phase.ERROR,
                detail="SUBMIT_FAILED",
                message=f"{job.attempts} submissions had no answer and the backend received"
                " none of them",
            )
            self._move(job, Phase.ERROR, status, **_RELEASED, not_before=None)
            return
        message = "the backend never received its submission; submitting again"
        done = self.store.retry_later(job.id, utcnow(), message)
        if done is not None:
            self._note(done, "RESUBMITTING", message)

    # -- helpers ------------------------------------------------------------------------------

    def _cancel_native(self, backend: Backend, job: Job, native_id: str, why: str) -> None:
        target = job.model_copy(update={"native_id": native_id})
        log.warning("job %s: cancelling native job %s: %s", job.id, native_id, why)
        cancel_quietly(backend, target)
        self._note(job, "NATIVE_CANCELLED", f"native job {native_id} cancelled: {why}")

    def _note(self, job: Job, detail: str, message: str) -> None:
        with contextlib.suppress(JobNotFoundError):
            self.store.note(job.id, job.phase, detail, message)


def cancel_quietly(backend: Backend, job: Job) -> None:
    """Take a job off its backend; a failure is logged, not raised."""
    try:
        backend.cancel(job)
    except Exception:
        log.warning("could not cancel job %s on %s", job.id, backend.name, exc_info=True)


def _claimed(job: Job) -> Job:
    """The job as its claim left it: one more submission begun."""
    return job.model_copy(update={"handover": Handover.CLAIMED, "attempts": job.attempts + 1})


def _submission_order(native_id: str) -> tuple[int, str]:
    """Earlier submissions first, where the scheduler numbers its jobs."""
    return len(native_id), native_id


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
