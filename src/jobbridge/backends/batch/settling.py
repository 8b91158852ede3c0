"""Reading the status of many jobs: one queue query, the exit-code files of jobs the queue
leaves unclear, then the accounting; a job's end settled from what they say, with the
walltime and requeue heuristics, and what a job's own push says."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence

from jobbridge.backends.base import BackendContext, BackendOptions, Missing
from jobbridge.backends.batch.jobfiles import JobFiles, exit_file_status
from jobbridge.backends.batch.native import UNTOLD, NativeState
from jobbridge.backends.batch.pushing import weigh
from jobbridge.errors import BackendError, JobbridgeError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.push import PushEvent
from jobbridge.transport.base import CommandResult

__all__ = ["Settling"]

log = logging.getLogger(__name__)

_REMEMBERED = 10_000
"""Distinct native states whose reading a backend keeps at the most."""


class Settling(JobFiles):
    """The status of many jobs from one queue query, their exit-code files and the
    accounting; what a job's push says."""

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self._last_seen: dict[str, float] = {}
        self._ended_seen: dict[str, float] = {}
        self._requeued_seen: dict[str, float] = {}
        self._readings: dict[NativeState, tuple[JobStatus, bool]] = {}
        self._told: dict[str, tuple[NativeState, JobStatus, Job | None]] = {}
        """By native id: the queue state a job was last told about, what it was told, and
        the job as last seen showing it."""

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        """One queue query; for jobs it leaves unclear, the exit-code files their scripts
        wrote; for those without one, one accounting query. The queue's failure fails the
        query; a failing accounting or file read leaves only the jobs that needed it without
        news, and a record that cannot be read, only its own job. A job that the queue shows
        as it did when it was last told, and that already shows what it was told, has no
        news."""
        by_native = {job.native_id: job for job in jobs if job.native_id}
        env = self.status_environment()
        states = self._queue_states(list(by_native), env)
        now = time.monotonic()
        answers: dict[str, JobStatus | Missing] = {}
        answered: list[str] = []
        unclear: list[str] = []
        last_seen, remembered = self._last_seen, self._told
        for native_id, job in by_native.items():
            state = states.get(native_id)
            if state is None:
                unclear.append(native_id)
                continue
            last_seen[native_id] = now
            told = remembered.get(native_id)
            if told is not None and (told[0] is state or told[0] == state):
                if told[2] is job:  # frozen: still shows it
                    continue
                if _shows(job, told[1]):
                    self._told[native_id] = (told[0], told[1], job)
                    continue
            if self._reading(state)[1]:
                unclear.append(native_id)
                continue
            status = self._weighed(job, state, in_queue=True)
            self._told[native_id] = (state, status, None)
            answers[job.id] = status
            answered.append(native_id)
        for native_id in unclear:
            self._told.pop(native_id, None)
        if len(self._told) > 2 * len(by_native) + 1000:
            self._told = {native: t for native, t in self._told.items() if native in by_native}
        # A script that ran to its end recorded its outcome; only the rest need accounting.
        exit_files = self._exit_files([by_native[native] for native in unclear])
        if exit_files is not None:
            unrecorded = [native for native in unclear if native not in exit_files]
            accounted, searched = self._accounted(unrecorded, env)
            for native_id in unclear:
                job = by_native[native_id]
                decided = self._decide(
                    job, states.get(native_id), exit_files.get(native_id),
                    accounted.get(native_id), searched=searched,
                )  # fmt: skip
                if decided is not None:
                    answers[job.id] = decided
                    answered.append(native_id)
        for native_id in answered:
            said = answers[by_native[native_id].id]
            if isinstance(said, JobStatus) and said.phase.is_final:
                self._forget(native_id)
        if exit_files is None:  # only what the queue tells in full is news
            return answers
        # only the jobs with news, not every job asked about (most have none)
        news = [by_native[native_id] for native_id in answered]
        missing = [job for job in news if isinstance(answers[job.id], Missing)]
        answers.update(self._terminated(missing))
        for job in news:
            verdict = answers[job.id]
            if isinstance(verdict, JobStatus) and _timed_out(job, verdict):
                answers[job.id] = verdict.model_copy(update={"detail": "TIMEOUT"})
        return self._with_scheduler_words(by_native, answers)

    def pushed(self, job: Job, event: PushEvent) -> JobStatus | None:
        """The files the job's script wrote (one read): its exit-code file, or the native
        id it noted when it started. The scheduler is not asked."""
        if not job.native_id:
            return None
        exit_path = self.exit_code_path(job)
        try:
            contents = self.transport.read_many([exit_path, exit_path + ".id"], limit=256)
        except (JobbridgeError, OSError):
            return None
        recorded = contents.get(exit_path)
        exit_file = None if recorded is None else exit_file_status(recorded)
        settled = weigh(event, exit_file, contents.get(exit_path + ".id"))
        if settled is not None and settled.phase.is_final:
            self._forget(job.native_id)  # polling will not ask about it again
        return settled

    def _queue_states(
        self, native_ids: Sequence[str], env: Mapping[str, str]
    ) -> dict[str, NativeState]:
        """What the queue says of these jobs: one query naming them, or for more than
        ``max_ids_per_query``, one listing of the user's jobs where the scheduler has one
        (else one query per so many)."""
        ids = self.query_ids(native_ids)
        if not ids:
            return {}
        limit = self.options.max_ids_per_query
        listing = self.status_listing_command() if len(ids) > limit else None
        commands = [listing] if listing else [self.status_command(c) for c in _chunks(ids, limit)]
        states: dict[str, NativeState] = {}
        for command in commands:
            result = self._run(command, env=env, check=False, idempotent=True)
            states.update(self._answer(result, self.parse_status))
        return states

    def _accounted(
        self, unrecorded: Sequence[str], env: Mapping[str, str]
    ) -> tuple[dict[str, NativeState], bool]:
        """What the accounting says of these jobs, and whether it answered at all."""
        command = self.accounting_command(self.query_ids(unrecorded)) if unrecorded else None
        if command is None:
            return {}, True
        try:
            result = self._run(command, env=env, check=False, idempotent=True)
            found = self._answer(result, self.parse_accounting)
        except JobbridgeError as error:
            log.warning(
                "%s: accounting unavailable, %d jobs wait: %s", self.name, len(unrecorded), error
            )
            return {}, False
        return {native: found[native] for native in unrecorded if native in found}, True

    def _forget(self, native_id: str) -> None:
        for seen in (self._last_seen, self._ended_seen, self._requeued_seen, self._told):
            seen.pop(native_id, None)

    def _decide(
        self,
        job: Job,
        state: NativeState | None,
        exit_file: JobStatus | None,
        accounted: NativeState | None = None,
        *,
        searched: bool = True,
    ) -> JobStatus | Missing | None:
        """Weigh what the queue, the exit-code file and the accounting say of one job.
        ``searched``: the accounting (if the scheduler has one) answered, so that a job it
        does not know is missing rather than without news."""
        native_id = job.native_id or ""
        if state is not None:
            told, unclear = self._reading(state)
            if not unclear:
                return self._weighed(job, state, in_queue=True)
            # the queue says it ended, but not how
            if exit_file is not None and state.word not in self.REQUEUEABLE:
                return _merged(told, exit_file)
            if accounted is not None:
                return self._weighed(job, accounted, in_queue=True)
            if state.word in self.REQUEUEABLE:
                return self._weighed(job, state, in_queue=True)
            first = self._ended_seen.setdefault(native_id, time.monotonic())
            waited = time.monotonic() - first > self.options.accounting_delay
            return told if waited else None
        if exit_file is not None:
            return exit_file
        if accounted is not None:
            return self._weighed(job, accounted, in_queue=False)
        if not searched:
            return None
        return Missing(
            f"{self.scheduler} lists no job {native_id}, its accounting has no record of it"
            " and it left no exit code"
        )

    def _weighed(self, job: Job, state: NativeState, *, in_queue: bool) -> JobStatus:
        """The scheduler's word, except that a requeueable one (preempted, node failure)
        ends nothing while the scheduler may still run the job again: the job shows
        SUSPENDED until it runs again, and ends only if the word stands for
        ``requeue_grace`` seconds (its native job cancelled first) or the queue forgets it."""
        native_id = job.native_id or ""
        status = self._reading(state)[0]
        if state.word not in self.REQUEUEABLE:
            self._requeued_seen.pop(native_id, None)
            return status
        if not in_queue:
            return status
        first = self._requeued_seen.setdefault(native_id, time.monotonic())
        if time.monotonic() - first > self.options.requeue_grace:
            return status.model_copy(update={"stop_native": True})
        return JobStatus(
            phase=Phase.SUSPENDED,
            detail=state.word,
            message=f"{self.scheduler} says {state.word}; it may run the job again",
        )

    def _reading(self, state: NativeState) -> tuple[JobStatus, bool]:
        """What a native state means (``to_status``) and whether it leaves the job unclear,
        worked out once per distinct state: a ``JobStatus`` is frozen, so jobs in the same
        state share one."""
        try:
            known = self._readings.get(state)
        except TypeError:  # a state with fields that cannot be hashed
            return self.to_status(state), self._unclear(state)
        if known is None:
            if len(self._readings) >= _REMEMBERED:
                self._readings.clear()
            known = self._readings[state] = (self.to_status(state), self._unclear(state))
        return known

    def _unclear(self, state: NativeState | None) -> bool:
        """Not seen, or seen ended without the exit code that tells how."""
        if state is None:
            return True
        if state.word in self.REQUEUEABLE:
            return True
        phase, _ = self.STATES.get(state.word, (Phase.UNKNOWN, None))
        return phase.is_final and phase is not Phase.ABORTED and state.exit_code is None

    def query_ids(self, native_ids: Sequence[str]) -> list[str]:
        """The ids to name in a query for these jobs (for array members: their array)."""
        return list(native_ids)

    def _answer(self, result: CommandResult, parse: object) -> dict[str, NativeState]:
        assert callable(parse)
        try:
            parsed: dict[str, NativeState] = parse(result.stdout)
        except (ValueError, IndexError, KeyError) as error:
            raise BackendError(
                f"{self.scheduler}: unreadable answer from {result.argv[0]}: {error}",
                retryable=True,
            ) from error
        if not parsed and result.returncode != 0 and not self.empty_answer_is_fine(result):
            raise BackendError(
                f"{result.argv[0]} failed ({result.returncode}): {result.stderr.strip()}",
                retryable=True,
            )
        return parsed


def _shows(job: Job, status: JobStatus) -> bool:
    """Whether the job already shows what ``status`` says, with no misses to clear."""
    return (
        job.phase is status.phase
        and job.detail == status.detail
        and not job.misses
        and (job.started is not None or status.started is None)
    )


_TERM_EXIT = 128 + 15
"""What the job script's TERM trap records: the scheduler (or a cancel) killed it."""
_WALLTIME_SLACK = 0.9
"""A job killed with TERM after this share of its walltime ran into its limit."""


def _timed_out(job: Job, status: JobStatus) -> bool:
    """Ended by TERM with no other word, after its walltime."""
    walltime = job.spec.resources.walltime
    if walltime is None or status.detail is not None or status.exit_code != _TERM_EXIT:
        return False
    if status.phase is not Phase.ERROR or status.started is None or status.ended is None:
        return False
    ran = (status.ended - status.started).total_seconds()
    return ran >= walltime.total_seconds() * _WALLTIME_SLACK


def _merged(scheduler: JobStatus, exit_file: JobStatus) -> JobStatus:
    """The scheduler's word on how a job ended, with the exit code its script recorded;
    where the scheduler said only that it ended (``UNTOLD``), the exit code decides."""
    if scheduler.detail == UNTOLD:
        return exit_file.model_copy(
            update={
                "started": scheduler.started or exit_file.started,
                "ended": scheduler.ended or exit_file.ended,
            }
        )
    return scheduler.model_copy(
        update={
            "exit_code": exit_file.exit_code,
            "started": scheduler.started or exit_file.started,
            "ended": scheduler.ended or exit_file.ended,
        }
    )


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
