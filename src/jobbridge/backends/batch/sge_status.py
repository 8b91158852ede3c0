"""Grid Engine's states, and the status of its jobs settled from one ``qstat``, the exit-code
files and ``qacct``, with what its dependencies need.

Grid Engine holds a job for others (``-hold_jid``) until they leave the queue, however they
ended. ``afterok`` rests on what qsub(1) documents for ``-hold_jid``: a job whose script exits
100 stays in the error state and its dependents stay held. Every jobbridge script for Grid
Engine exits 100 when its program failed (the real exit code is in its exit-code file), and
never 99, which would make Grid Engine run it again. jobbridge then reads that code, deletes
the ``afterok`` dependents that can never run, and deletes the failed job, which releases the
``afterany`` ones. ``afternotok`` cannot be held this way (a job that succeeds leaves the
queue at once) and is refused. What this cannot cover: a job that Grid Engine kills (h_rt,
qdel, a lost node) leaves the queue at once and releases its ``afterok`` dependents; those
not yet started when jobbridge learns it are deleted, a started one is only logged.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar

from jobbridge.backends.base import Missing
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.sge_records import WAITING, said, state_word
from jobbridge.errors import BackendError, JobbridgeError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase

__all__ = ["SgeStatus"]

log = logging.getLogger(__name__)

_CLOCK_SKEW = 120.0
"""Seconds by which the clocks of this host and the execution hosts may differ."""

_PENDING = {"qw", "Rq", "hqw", "hRwq"}
_HELD = {"hqw", "hRwq"}
_ERROR_STATE = {"Eqw", "Ehqw", "EhRqw"}
_SUSPENDED = ["s", "ts", "S", "tS", "T", "tT", "Rs", "Rts", "RS", "RtS", "RT", "RtT"]
_DELETING = ["dr", "dt", "dRr", "dRt", "ds", "dS", "dT", "dRs", "dRS", "dRT"]


class SgeStatus(BatchBackend):
    """What Grid Engine's state letters and accounting words mean, and one refresh of many
    jobs: ``status``."""

    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]] = {
        # qstat's state letters, as sge_status(5) lists them
        "qw": (Phase.QUEUED, None),
        "Rq": (Phase.QUEUED, None),
        "hqw": (Phase.HELD, None),
        "hRwq": (Phase.HELD, None),
        "r": (Phase.EXECUTING, None),
        "hr": (Phase.EXECUTING, None),
        "t": (Phase.EXECUTING, None),
        "Rr": (Phase.EXECUTING, None),
        "Rt": (Phase.EXECUTING, None),
        **dict.fromkeys(_SUSPENDED, (Phase.SUSPENDED, None)),
        **dict.fromkeys(_ERROR_STATE, (Phase.ERROR, "ERROR_STATE")),
        **dict.fromkeys(_DELETING, (Phase.ABORTED, "CANCELLED")),
        # qacct has no state word, only a `failed` code: _accounting_word names it
        "COMPLETED": (Phase.COMPLETED, None),
        "FAILED": (Phase.ERROR, None),
        "TIMEOUT": (Phase.ERROR, "TIMEOUT"),
        "OUT_OF_MEMORY": (Phase.ERROR, "OUT_OF_MEMORY"),
        "CANCELLED": (Phase.ABORTED, "CANCELLED"),
        "KILLED": (Phase.ERROR, "KILLED"),
        "NODE_FAIL": (Phase.ERROR, "NODE_FAIL"),
        "START_FAILED": (Phase.ERROR, "START_FAILED"),
        "EPILOG_FAILED": (Phase.ERROR, "EPILOG_FAILED"),
        "RESCHEDULED": (Phase.ERROR, "RESCHEDULED"),
    }

    @abstractmethod
    def accounting_query(self, since: datetime) -> list[str]:
        """The ``qacct`` command for every job that ended after ``since``."""

    def to_status(self, state: NativeState) -> JobStatus:
        if state.word in _HELD and state.reason and state.reason.startswith(WAITING):
            return JobStatus(phase=Phase.QUEUED, message=state.reason)
        return super().to_status(state)

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        """One ``qstat`` for all jobs. For jobs it no longer lists, and jobs in the error
        state, the exit-code files their scripts wrote; for jobs gone without one (killed,
        out of time), one ``qacct``. Then one ``qdel`` if some jobs must leave the queue:
        failed jobs in the error state, after the ``afterok`` dependents they rule out.
        A record that cannot be read leaves only its own job without news."""
        by_native = {job.native_id: job for job in jobs if job.native_id}
        if not by_native:
            return {}
        env = self.status_environment()
        command = self.status_command(list(by_native))
        answer = self._run(command, env=env, check=False, idempotent=True)
        if answer.returncode != 0:
            raise BackendError(
                f"qstat failed ({answer.returncode}): {said(answer)}", retryable=True
            )
        queue = self._answer(answer, self.parse_status)
        now = time.monotonic()
        for native_id in by_native:
            if native_id in queue:
                self._last_seen[native_id] = now
        gone = [native for native in by_native if native not in queue]
        stuck = [native for native in by_native if state_word(queue, native) in _ERROR_STATE]
        exit_files = self._exit_files([by_native[native] for native in gone + stuck])
        # files that could not be read at all: only what the queue shows is news
        skip = set(gone + stuck) if exit_files is None else set()
        exit_files = exit_files or {}
        unresolved = [by_native[n] for n in gone if n not in exit_files and n not in skip]
        accounted, searched = self._accounting(unresolved, env)
        answers: dict[str, JobStatus | Missing] = {}
        for native_id, job in by_native.items():
            if native_id in skip:
                continue
            status = self._sge_decision(
                job,
                queue.get(native_id),
                exit_files.get(native_id),
                accounted.get(native_id),
                searched=searched,
            )
            if status is not None:
                answers[job.id] = status
        answers.update(self._never_satisfied(jobs, answers, queue))
        self._delete_from_queue(jobs, answers, queue)
        for job in jobs:
            told = answers.get(job.id)
            if isinstance(told, JobStatus) and told.phase.is_final:
                self._forget(job.native_id or "")
        return self._with_scheduler_words(by_native, answers)

    def _accounting(
        self, jobs: Sequence[Job], env: Mapping[str, str]
    ) -> tuple[dict[str, NativeState], bool]:
        """What qacct says of these jobs, and whether it answered at all."""
        if not jobs or not self.options.accounting:
            return {}, True
        command = self.accounting_query(self._earliest_end(jobs))
        try:
            result = self._run(command, env=env, check=False, idempotent=True)
            if result.returncode != 0:  # no accounting file, say: exit-code files still count
                raise BackendError(f"qacct failed ({result.returncode}): {said(result)}")
            return self._answer(result, self.parse_accounting), True
        except JobbridgeError as error:
            log.warning("%s: accounting unavailable, %d jobs wait: %s", self.name, len(jobs), error)
            return {}, False

    def _earliest_end(self, jobs: Sequence[Job]) -> datetime:
        """A time before which none of these jobs can have ended: when qstat last listed
        them, or else when they started or were queued."""
        wall, monotonic = time.time(), time.monotonic()
        times = []
        for job in jobs:
            seen = self._last_seen.get(job.native_id or "")
            if seen is not None:
                times.append(wall - (monotonic - seen))
            else:
                times.append((job.started or job.queued or job.created).timestamp())
        return datetime.fromtimestamp(min(times) - _CLOCK_SKEW, UTC)

    def _sge_decision(
        self,
        job: Job,
        queued: NativeState | None,
        exit_file: JobStatus | None,
        accounted: NativeState | None,
        *,
        searched: bool,
    ) -> JobStatus | Missing | None:
        if queued is not None and queued.word in _ERROR_STATE:
            if exit_file is not None:  # its script failed and exited 100: see the module doc
                return exit_file
            return self._after_delay(job, self.to_status(queued))
        if queued is not None:
            if job.phase is Phase.HELD and queued.word in _HELD:
                return None  # qstat shows one `h` for holds of every kind; jobbridge's stays
            return self.to_status(queued)
        if exit_file is not None:
            return exit_file
        if accounted is not None:
            return self.to_status(accounted)
        return self._decide(job, None, None, None, searched=searched)

    def _after_delay(self, job: Job, status: JobStatus) -> JobStatus | None:
        """``status`` once the job has shown it for ``accounting_delay`` seconds: time for
        an exit-code file written on another host to show on this one."""
        first = self._ended_seen.setdefault(job.native_id or "", time.monotonic())
        return status if time.monotonic() - first > self.options.accounting_delay else None

    def _never_satisfied(
        self,
        jobs: Sequence[Job],
        answers: Mapping[str, JobStatus | Missing],
        queue: Mapping[str, NativeState],
    ) -> dict[str, JobStatus]:
        """Pending jobs that wait for the success of a job that has just failed."""
        failed = {
            job_id
            for job_id, status in answers.items()
            if isinstance(status, JobStatus)
            and status.phase.is_final
            and status.phase is not Phase.COMPLETED
        }
        verdicts = {}
        for job in jobs:
            told = answers.get(job.id)
            if (isinstance(told, JobStatus) and told.phase.is_final) or not any(
                dependency.condition == "afterok" and dependency.job_id in failed
                for dependency in job.spec.depends_on
            ):
                continue
            if state_word(queue, job.native_id or "") not in _PENDING:
                # a parent killed by Grid Engine leaves the queue at once, releasing it
                log.warning("job %s started although a job it needs failed", job.id)
                continue
            verdicts[job.id] = JobStatus(
                phase=Phase.ABORTED,
                detail="DEPENDENCY_NEVER_SATISFIED",
                message="a job it depends on ended in a way the dependency excludes",
            )
        return verdicts

    def _delete_from_queue(
        self,
        jobs: Sequence[Job],
        answers: Mapping[str, JobStatus | Missing],
        queue: Mapping[str, NativeState],
    ) -> None:
        """One qdel: first the dependents that can never run, then the ended jobs still held
        in the error state (which releases their other dependents)."""
        ruled_out, ended = [], []
        for job in jobs:
            status = answers.get(job.id)
            if not isinstance(status, JobStatus) or not status.phase.is_final:
                continue
            if job.native_id is None:
                continue
            if status.detail == "DEPENDENCY_NEVER_SATISFIED":
                ruled_out.append(job.native_id)
            elif state_word(queue, job.native_id) in _ERROR_STATE:
                ended.append(job.native_id)
        if not ruled_out and not ended:
            return
        result = self._run(self.cancel_command(ruled_out + ended), check=False, idempotent=True)
        if result.returncode != 0:
            log.warning("%s: qdel of ended jobs failed: %s", self.name, said(result))
