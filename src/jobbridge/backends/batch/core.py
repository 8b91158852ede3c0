"""The batch backend's core: the hooks a scheduler fills in (its directives, how to submit and
parse the id, how to ask about many jobs in one command and read the answer, how to cancel,
and one table from its state words to phases), and how it runs the scheduler's commands."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import ClassVar, TypeVar

from jobbridge.backends.base import Backend, BackendContext, BackendOptions, NativeDependency
from jobbridge.backends.batch.marks import Mark
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.options import BatchOptions, connect
from jobbridge.backends.batch.records import UnreadableRecord
from jobbridge.backends.batch.script import directive_value
from jobbridge.errors import BackendError, JobbridgeError, ResourcesNotSupportedError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec
from jobbridge.transport.base import CommandResult, Transport

__all__ = ["BatchCore"]

log = logging.getLogger(__name__)
_Record = TypeVar("_Record")
_News = TypeVar("_News")


class BatchCore(Backend):
    """The hooks a scheduler fills in, and what every part of a batch backend shares."""

    scheduler: ClassVar[str]
    """Short name: error messages, and the prefix of its ``attributes``."""
    STATES: ClassVar[Mapping[str, tuple[Phase, str | None]]]
    """Every state word the scheduler uses, with the phase and detail it means."""
    TRANSIENT_SUBMIT: ClassVar[tuple[str, ...]] = ()
    """Words of a failed submission command that mean it created nothing and may work later
    (the controller is down, say)."""
    AMBIGUOUS_SUBMIT: ClassVar[tuple[str, ...]] = ()
    """Words of a failed submission command that leave open whether it created the job (a
    time-out between the client and the controller, say)."""
    REQUEUEABLE: ClassVar[frozenset[str]] = frozenset()
    """Words after which the scheduler may run the job again (preemption, node failure):
    they end nothing while the queue still holds the job."""
    Options = BatchOptions
    options: BatchOptions
    native_arrays = True
    template: ClassVar[str] = "job.sh.j2"
    script_name: ClassVar[str] = "job.sh"
    submission_entry: ClassVar[str] = "job.sh"
    """The file of ``submission_files`` that ``submit_command`` is given."""
    submit_stdin: ClassVar[bool] = False
    """True if the submit command reads that file on its standard input (``bsub < job.sh``)."""

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self.transport: Transport = connect(self.options)
        self._warned: set[tuple[str, str]] = set()
        self._command_env: dict[str, str] | None = None

    # -- hooks a scheduler fills in --------------------------------------------------------
    @abstractmethod
    def directives(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> list[str]:
        """Header lines for the script (``#SBATCH ...``); raise ``ResourcesNotSupportedError``
        for anything the scheduler cannot encode."""

    @abstractmethod
    def portable_variables(self, array: bool) -> dict[str, str]:
        """``JOBBRIDGE_*`` names and the shell expressions that give them on this scheduler."""

    @abstractmethod
    def submit_command(self, script: str) -> list[str]: ...

    @abstractmethod
    def parse_job_id(self, output: str) -> str: ...

    def member_ids(self, native_id: str, members: Sequence[Job]) -> list[str]:
        """The native ids of an array's members, given the id the submission returned (or
        that ``parse_located`` found the submission under)."""
        raise NotImplementedError

    @abstractmethod
    def status_command(self, native_ids: Sequence[str]) -> list[str]: ...

    def status_listing_command(self) -> list[str] | None:
        """One command that lists every job of this user that the queue holds, answering as
        ``status_command`` does: asked instead of it for more than ``max_ids_per_query``
        jobs. None if the scheduler has no such listing."""
        return None

    @abstractmethod
    def parse_status(self, output: str) -> dict[str, NativeState]: ...

    def accounting_command(self, native_ids: Sequence[str]) -> list[str] | None:
        """A command that tells about ended jobs, or None if the scheduler keeps no record."""
        return None

    def parse_accounting(self, output: str) -> dict[str, NativeState]:
        return {}

    @abstractmethod
    def cancel_command(self, native_ids: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def locate_queue_command(self, tags: Sequence[str]) -> list[str]:
        """One command that lists the queued, running and recently ended jobs carrying any
        of ``tags`` (see ``tag``); ``parse_located`` reads its answer."""

    @abstractmethod
    def parse_located(self, output: str) -> dict[str, list[str]]:
        """Tag -> the native ids (as the submission returned them) of the jobs carrying it;
        a member's submission of its own as ``NATIVE#INDEX`` (see ``marks.add_located``)."""

    def locate_accounting_command(self, tags: Sequence[str], since: datetime) -> list[str] | None:
        """One command that lists the ended jobs carrying any of ``tags`` that were submitted
        after ``since``, or None if the scheduler keeps no such record."""
        return None

    def parse_located_accounting(self, output: str) -> dict[str, list[str]]:
        return self.parse_located(output)

    def hold_command(self, native_ids: Sequence[str]) -> list[str] | None:
        return None

    def release_command(self, native_ids: Sequence[str]) -> list[str] | None:
        return None

    def empty_answer_is_fine(self, result: CommandResult) -> bool:
        """Whether a failing status command only said that it knows none of the jobs."""
        return False

    def command_environment(self) -> dict[str, str]:
        """Variables every one of the scheduler's commands needs (e.g. where it lives); asked
        once, before the backend's first command."""
        return {}

    def status_environment(self) -> dict[str, str]:
        """More variables for the status and accounting commands (e.g. a time format)."""
        return {}

    def to_status(self, state: NativeState) -> JobStatus:
        """What a native state means; a function of the state alone, so that jobs in the
        same state share one answer."""
        phase, detail = self.STATES.get(state.word, (Phase.UNKNOWN, state.word))
        if state.word not in self.STATES:
            self.warn_once(state.word, f"unknown state {state.word!r}, shown as UNKNOWN")
        if phase is Phase.ERROR and detail is None and state.exit_code == 0:
            detail = state.word
        return JobStatus(
            phase=phase,
            detail=detail,
            message=state.reason,
            exit_code=state.exit_code,
            started=state.started,
            ended=state.ended,
        )

    @property
    def search_delay(self) -> float:
        return self.options.accounting_delay

    def tag(self, job: Job) -> str:
        """The mark every submission carries where the scheduler's queue and accounting
        both show it, so that ``locate`` finds what a submission with an unknown outcome
        created: jobbridge's id of the job, or of its array for a member."""
        return f"jb-{job.array_id or job.id}"

    def mark(self, job: Job, members: Sequence[Job]) -> Mark:
        """What a submission of ``members`` (``job`` first) carries: its tag, and the index
        of a member handed over alone (see ``marks``)."""
        mark = Mark.of(self.tag(job), job, members)
        if not mark.reads_back:
            raise self.unsupported("id", f"{mark.tag!r} cannot mark a {self.scheduler} job")
        return mark

    # -- what every part of a backend shares ----------------------------------------------

    def read_each(
        self, records: Iterable[_Record | UnreadableRecord], read: Callable[[_Record], _News]
    ) -> Iterator[_News]:
        """What ``read`` makes of each record. A record that could not be read, or that
        ``read`` finds unreadable (``UnreadableRecord``), is no news for its job only: it is
        left out, and said once."""
        for record in records:
            try:
                if isinstance(record, UnreadableRecord):
                    raise record
                told = read(record)
            except UnreadableRecord as bad:
                self.unreadable(bad)
                continue
            yield told

    def readable(self, records: Iterable[_Record | UnreadableRecord]) -> Iterator[_Record]:
        """The records that could be read; each one that could not is said once."""
        return self.read_each(records, _unchanged)

    def unreadable(self, bad: UnreadableRecord) -> None:
        """No news for the one job whose record could not be read; said once."""
        self.warn_once(bad.key, f"unreadable record of job {bad.key}, no news for it: {bad}")

    def warn_once(self, key: str, message: str) -> None:
        """Log a problem with one job's record once, not at every poll."""
        if (key, message) in self._warned:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned.add((key, message))
        log.warning("%s: %s", self.name, message)

    def cancel(self, job: Job) -> None:
        assert job.native_id is not None
        self._run(self.cancel_command([job.native_id]), idempotent=True)

    def hold(self, job: Job) -> None:
        self._run(self._required(self.hold_command, job, "hold"), idempotent=True)

    def release(self, job: Job) -> None:
        self._run(self._required(self.release_command, job, "release"), idempotent=True)

    def _required(
        self, make: Callable[[Sequence[str]], list[str] | None], job: Job, what: str
    ) -> list[str]:
        assert job.native_id is not None
        command = make([job.native_id])
        if command is None:
            raise BackendError(f"{self.scheduler} backend {self.name!r} cannot {what} jobs")
        return command

    def close(self) -> None:
        self.transport.close()

    def _commands_environment(self) -> dict[str, str]:
        if self._command_env is None:
            self._command_env = self.command_environment()
        return self._command_env

    def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        idempotent: bool = False,
    ) -> CommandResult:
        env = {**self._commands_environment(), **(env or {})}
        try:
            return self.transport.run(
                argv,
                cwd=cwd,
                env=env or None,
                timeout=self.options.command_timeout,
                check=check,
                idempotent=idempotent,
            )
        except JobbridgeError:
            raise
        except OSError as error:
            raise BackendError(f"{argv[0]}: {error}", retryable=True) from error

    # -- helpers for subclasses ----------------------------------------------------------------

    def unsupported(self, field: str, reason: str = "") -> ResourcesNotSupportedError:
        return ResourcesNotSupportedError(
            self.name, field, reason or f"{self.scheduler} has no such option"
        )

    def _value(self, field: str, value: object) -> str:
        """``value`` for a directive line; refused if the line cannot carry it."""
        return directive_value(self.scheduler, field, value)

    def charged_to(self, spec: JobSpec, field: str) -> str | None:
        """What a job is charged to on a scheduler that has one of account and project
        (``field`` names it): whichever of the two the spec gives; both only if the same."""
        account, project = spec.account, spec.project
        if account and project and account != project:
            raise self.unsupported(
                "project", f"{self.scheduler} has one {field} per job; give one of the two"
            )
        chosen = account or project
        return self._value(field, chosen) if chosen else None


def _unchanged(record: _Record) -> _Record:
    return record
