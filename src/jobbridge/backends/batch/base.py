"""What every batch scheduler backend shares. A scheduler subclass fills in small, pure hooks:
its directives, how to submit and parse the id, how to ask about many jobs in one command and
read the answer, how to cancel, and one table from its state words to phases."""

from __future__ import annotations

import logging
import math
import posixpath
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from pydantic import Field

from jobbridge import staging
from jobbridge.backends import containers
from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.backends.batch.marks import Mark, split_located
from jobbridge.backends.batch.pushing import push_values, weigh
from jobbridge.backends.batch.records import UnreadableRecord
from jobbridge.backends.batch.script import directive_value, render, shell
from jobbridge.backends.containers import ContainerOptions
from jobbridge.errors import (
    BackendError,
    CommandFailed,
    JobbridgeError,
    ResourcesNotSupportedError,
    SubmissionError,
    SubmitOutcome,
)
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.push import PushEvent
from jobbridge.spec import JobSpec, Launcher
from jobbridge.transport.base import FILES_NOT_WRITTEN, CommandResult, Transport
from jobbridge.transport.local import LocalTransport
from jobbridge.transport.ssh import SshTransport

__all__ = ["UNTOLD", "BatchBackend", "BatchOptions", "NativeDependency", "NativeState"]

UNTOLD = "NO_EXIT_STATUS"
"""The detail of an ended job whose scheduler does not say how it ended: its exit-code file
decides between COMPLETED and ERROR."""

log = logging.getLogger(__name__)
_Record = TypeVar("_Record")
_News = TypeVar("_News")

_PASSING_TROUBLE = ("No space left on device", "Disk quota exceeded", "Resource temporarily")
_LOCATE_SLACK = timedelta(minutes=5)
"""Clocks of the store's host and the scheduler's may differ this much."""
_WORDS_LIMIT = 4096
_REMEMBERED = 10_000
"""Distinct native states whose reading a backend keeps at the most."""


class BatchOptions(ContainerOptions):
    min_refresh_interval: float = Field(5.0, ge=0)
    work_dir: str | None = Field(
        None, description="root of the job directories on the cluster (default: jobbridge's)"
    )
    accounting: bool = Field(True, description="ask the accounting database about ended jobs")
    accounting_delay: float = Field(
        15.0, ge=0, description="seconds an ended job may take to reach the accounting"
    )
    command_timeout: float = Field(60.0, gt=0)
    requeue_grace: float = Field(
        300.0,
        ge=0,
        description="seconds a job may show a requeueable state (preempted, node failure)"
        " in the queue before jobbridge takes that state as its end",
    )
    max_ids_per_query: int = Field(
        1000,
        ge=1,
        description="jobs named in one status query; for more, one listing of the user's jobs"
        " where the scheduler has one, else one query per so many",
    )
    submit_arguments: list[str] = Field(
        default_factory=list, description="extra arguments for every submission command"
    )
    host: str | None = Field(
        None, description="reach the scheduler over SSH at this destination (user@login)"
    )
    port: int | None = Field(None, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str | None = Field(None, description="pin host keys to this file")
    ssh_config: str | None = Field(None, description="an ssh_config file other than ~/.ssh/config")
    ssh_options: list[str] = Field(default_factory=list, description="more ssh -o options")


@dataclass(frozen=True)
class NativeState:
    """One job as a scheduler command describes it."""

    word: str
    reason: str | None = None
    exit_code: int | None = None
    started: datetime | None = None
    ended: datetime | None = None


class BatchBackend(Backend):
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
        self.transport: Transport = _transport(self.options)
        self._root: str | None = None
        self._last_seen: dict[str, float] = {}
        self._ended_seen: dict[str, float] = {}
        self._requeued_seen: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()
        self._readings: dict[NativeState, tuple[JobStatus, bool]] = {}
        self._told: dict[str, tuple[NativeState, JobStatus, Job | None]] = {}
        """By native id: the queue state a job was last told about, what it was told, and
        the job as last seen showing it."""
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

    # -- what the engine calls ---------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        problems = staging.validate_data(spec.stage_in)
        if problems:
            raise ResourcesNotSupportedError(self.name, "stage_in", "; ".join(problems))
        if spec.launcher is Launcher.SRUN and self.scheduler != "slurm":
            raise ResourcesNotSupportedError(self.name, "launcher", "srun needs SLURM")
        containers.check_image(self.name, self.options, spec)
        probe = Job(id="check", spec=spec, backend=self.name, created=datetime.now(UTC))
        members = (
            [probe]
            if spec.array is None
            else [
                probe.model_copy(update={"array_id": "check", "array_index": index})
                for index in spec.array.indices
            ]
        )
        self.directives(members[0], members, [])

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        """A job; or one array member on its own, as a one-task array keeping its index."""
        native_id = self._submit(job, [job], dependencies)
        if job.array_index is None:
            return native_id
        return self.member_ids(native_id, [job])[0]

    def submit_array(
        self, jobs: Sequence[Job], dependencies: Sequence[NativeDependency] = ()
    ) -> list[str]:
        native_id = self._submit(jobs[0], jobs, dependencies)
        return self.member_ids(native_id, jobs)

    def _submit(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> str:
        """One command: unpack the submission files into the job's directory and submit.
        Failures say what they may have done (see ``SubmitOutcome``)."""
        job_dir = self.job_dir(job)
        if job.spec.stage_in:
            try:
                self.transport.make_dirs(job_dir)
                staging.stage_in(self.transport, job_dir, job.spec.stage_in)
            except (JobbridgeError, OSError) as error:  # before the scheduler heard anything
                retry = not isinstance(error, JobbridgeError) or error.retryable
                raise SubmissionError(
                    f"stage-in failed: {error}",
                    SubmitOutcome.NOT_MADE if retry else SubmitOutcome.REFUSED,
                ) from error
        files = {
            name: (text.encode(), mode)
            for name, (text, mode) in self.submission_files(job, members, dependencies).items()
        }
        entry = posixpath.join(job_dir, self.submission_entry_for(dependencies))
        program, *arguments = self.submission_command(entry, job, members, dependencies)
        command = [program, *self.options.submit_arguments, *arguments]
        try:
            result = self.transport.run_in(
                job_dir,
                files,
                command,
                feed=self.submission_entry if self.submit_stdin else None,
                timeout=self.options.command_timeout,
                env=self._commands_environment() or None,
            )
        except OSError as error:
            raise SubmissionError(f"{program}: {error}", SubmitOutcome.NOT_MADE) from error
        if result.returncode != 0:
            failed = CommandFailed(command, result.returncode, result.stdout, result.stderr)
            raise SubmissionError(str(failed), self.submit_failure(result)) from failed
        try:
            return self.parse_job_id(result.stdout)
        except (ValueError, IndexError) as error:
            raise SubmissionError(
                f"{self.scheduler}: cannot read a job id from {result.stdout.strip()!r}",
                SubmitOutcome.UNKNOWN,
            ) from error

    def submission_entry_for(self, dependencies: Sequence[NativeDependency]) -> str:
        """The file of ``submission_files`` that ``submit_command`` is given."""
        return self.submission_entry

    def submission_command(
        self,
        entry: str,
        job: Job,
        members: Sequence[Job],
        dependencies: Sequence[NativeDependency],
    ) -> list[str]:
        """The command that submits ``entry``; a scheduler whose submissions differ by job
        (beyond their files) says how."""
        return self.submit_command(entry)

    def submit_failure(self, result: CommandResult) -> SubmitOutcome:
        """What a submission command that exited non-zero did: its words decide."""
        said = result.stdout + result.stderr
        if result.returncode == FILES_NOT_WRITTEN and not result.stdout:
            return SubmitOutcome.NOT_MADE
        if any(words in said for words in self.AMBIGUOUS_SUBMIT):
            return SubmitOutcome.UNKNOWN
        if any(words in said for words in (*_PASSING_TROUBLE, *self.TRANSIENT_SUBMIT)):
            return SubmitOutcome.NOT_MADE
        return SubmitOutcome.REFUSED

    def submission_files(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> dict[str, tuple[str, int]]:
        """The files a submission puts in the job's directory: name -> (text, mode)."""
        return {self.script_name: (self.render_script(job, members, dependencies), 0o700)}

    def render_script(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency] = ()
    ) -> str:
        return render(self.template, **self.template_values(job, members, dependencies))

    def template_values(
        self, job: Job, members: Sequence[Job], dependencies: Sequence[NativeDependency]
    ) -> dict[str, Any]:
        """What the job script template is filled with; a scheduler may add an
        ``index_table`` (jobbridge's indices by its task number) or a ``failure_exit``."""
        spec = job.spec
        array = spec.array is not None
        job_dir = self.job_dir(job)
        suffix = '."$JOBBRIDGE_ARRAY_INDEX"' if array else ""
        values = {
            "job_id": job.array_id or job.id,
            "backend": self.name,
            "directives": self.directives(job, members, dependencies),
            "index_table": None,
            "portable": self.portable_variables(array),
            "name": job.name,
            "directory": spec.directory or job_dir,
            "environment": spec.environment,
            "job_dir": job_dir,
            "exit_suffix": suffix,
            "failure_exit": None,
            "prologue": spec.prologue,
            "epilogue": spec.epilogue,
            "command": self.launch_command(spec),
            "stdin": spec.stdin,
            "stdout_word": self._output_word(spec.stdout, job_dir, "stdout", suffix),
            "stderr_word": self._output_word(spec.stderr, job_dir, "stderr", suffix),
            "same_output": spec.stdout is not None and spec.stdout == spec.stderr,
            "push": push_values(self.push if self.options.push else None, job.array_id or job.id),
        }
        if spec.image is not None:  # the command in the job's image
            wrapped = containers.script_values(self.name, self.options, job, values)
            values.update(wrapped, command=self.launch_command(spec, wrapped["command"]))
        return values

    def launch_command(self, spec: JobSpec, program: list[str] | None = None) -> list[str]:
        program = program or [spec.executable, *spec.arguments]
        if spec.launcher is Launcher.SRUN:
            return ["srun", *program]
        if spec.launcher is Launcher.MPIRUN:
            return ["mpirun", "-np", str(spec.resources.processes), *program]
        return program

    def _output_word(self, chosen: str | None, job_dir: str, stream: str, suffix: str) -> str:
        if chosen is not None:
            return shell(chosen)
        return shell(posixpath.join(job_dir, stream)) + suffix

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
        exit_file = None if recorded is None else _exit_file_status(recorded)
        settled = weigh(event, exit_file, contents.get(exit_path + ".id"))
        if settled is not None and settled.phase.is_final:
            self._forget(job.native_id)  # polling will not ask about it again
        return settled

    def _terminated(self, jobs: Sequence[Job]) -> dict[str, JobStatus]:
        """Jobs that no source knows any more whose script noted a TERM (``.term`` next to
        the exit-code file, see job.sh.j2): the scheduler killed them, for their walltime
        or on a cancel, at a site that forgets ended jobs at once."""
        if not jobs:
            return {}
        files = {self.exit_code_path(job) + ".term": job for job in jobs}
        try:
            contents = self.transport.read_many(list(files), limit=256)
        except (JobbridgeError, OSError):
            return {}
        ended = {}
        for path, content in contents.items():
            fields = content.decode(errors="replace").split()
            if len(fields) < 3 or not all(field.isdigit() for field in fields[:3]):
                continue
            started, stopped = (datetime.fromtimestamp(int(f), UTC) for f in fields[1:3])
            ended[files[path].id] = JobStatus(
                phase=Phase.ERROR,
                exit_code=int(fields[0]),
                started=started,
                ended=stopped,
                message=f"{self.scheduler} ended the job script with TERM",
            )
        return ended

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

    def empty_answer_is_fine(self, result: CommandResult) -> bool:
        """Whether a failing status command only said that it knows none of the jobs."""
        return False

    def _exit_files(self, jobs: Sequence[Job]) -> dict[str, JobStatus] | None:
        """The exit codes that these jobs' own scripts recorded, by native id; None if the
        files could not be read at all. A file that cannot be understood is left out."""
        if not jobs:
            return {}
        files = {self.exit_code_path(job): job.native_id or "" for job in jobs}
        try:
            contents = self.transport.read_many(list(files), limit=256)
        except (JobbridgeError, OSError) as error:
            log.warning("%s: exit-code files unreadable: %s", self.name, error)
            return None
        found = {}
        for path, content in contents.items():
            status = _exit_file_status(content)
            if status is None:
                self.warn_once(
                    files[path], f"exit-code file {path} is unreadable: {content[:40]!r}"
                )
                continue
            found[files[path]] = status
        return found

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

    def locate(self, jobs: Sequence[Job]) -> Located:
        """One queue listing and, where the scheduler keeps one, one accounting listing of
        the jobs carrying these jobs' tags. Absence is certain only if both answered."""
        if not jobs:
            return Located({}, complete=True)
        tags = sorted({self.tag(job) for job in jobs})
        env = self.status_environment()
        listing = self._run(self.locate_queue_command(tags), env=env, check=False, idempotent=True)
        natives = self._located(listing, self.parse_located)
        complete = True
        since = min(job.created for job in jobs) - _LOCATE_SLACK
        command = self.locate_accounting_command(tags, since) if self.options.accounting else None
        if command is not None:
            try:
                answer = self._run(command, env=env, check=False, idempotent=True)
                accounted = self._located(answer, self.parse_located_accounting)
            except BackendError as error:
                log.warning("%s: accounting could not be searched: %s", self.name, error)
                accounted, complete = {}, False
            for tag, ids in accounted.items():
                natives[tag] = list(dict.fromkeys([*natives.get(tag, []), *ids]))
        found = {}
        for job in jobs:
            located = natives.get(self.tag(job), [])
            ids = [native for entry in located for native in self.located_ids(entry, job)]
            if ids:
                found[job.id] = ids
        return Located(found, complete=complete)

    def located_ids(self, entry: str, job: Job) -> list[str]:
        """The native ids of ``job`` that one id ``parse_located`` found under its tag
        stands for: a member's submission of its own is that member's only."""
        native, alone = split_located(entry)
        if job.array_index is None:
            return [native] if alone is None else []
        if alone is not None and alone != job.array_index:
            return []
        return self.member_ids(native, [job])

    def _located(
        self, result: CommandResult, parse: Callable[[str], dict[str, list[str]]]
    ) -> dict[str, list[str]]:
        if result.returncode != 0 and not self.empty_answer_is_fine(result):
            raise BackendError(
                f"{result.argv[0]} failed ({result.returncode}): {result.stderr.strip()}",
                retryable=True,
            )
        try:
            return parse(result.stdout)
        except (ValueError, IndexError, KeyError) as error:
            raise BackendError(
                f"{self.scheduler}: unreadable answer from {result.argv[0]}: {error}",
                retryable=True,
            ) from error

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

    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        """The program's own output; where the program left none (its script failed before
        it ran, say), what the scheduler captured of the job script instead."""
        for path in (self.output_path(job, stream), self.scheduler_output_path(job, stream)):
            if path is None:
                continue
            try:
                data = self.transport.read_bytes(path, offset, size)
            except FileNotFoundError:
                continue
            if data or offset:
                return data
        return b""

    def scheduler_output_path(self, job: Job, stream: Stream) -> str | None:
        """Where the scheduler writes what the job script printed outside the program."""
        return None

    def _with_scheduler_words(
        self, by_native: Mapping[str, Job], answers: dict[str, JobStatus | Missing]
    ) -> dict[str, JobStatus | Missing]:
        """Jobs that end in ERROR get the end of what the scheduler captured on stderr in
        their message (a script that could not even start the program says why there)."""
        if not any(
            isinstance(status, JobStatus) and status.phase is Phase.ERROR
            for status in answers.values()
        ):
            return answers
        paths = {}
        for job in by_native.values():
            status = answers.get(job.id)
            if isinstance(status, JobStatus) and status.phase is Phase.ERROR:
                path = self.scheduler_output_path(job, "stderr")
                if path is not None:
                    paths[path] = job.id
        if not paths:
            return answers
        try:
            contents = self.transport.read_many(list(paths), limit=_WORDS_LIMIT)
        except (JobbridgeError, OSError):
            return answers
        for path, content in contents.items():
            words = content.decode(errors="replace").strip()
            status = answers[paths[path]]
            if words and isinstance(status, JobStatus):
                said = f"{status.message}; " if status.message else ""
                answers[paths[path]] = status.model_copy(
                    update={"message": f"{said}{self.scheduler} captured: {words[-400:]}"}
                )
        return answers

    def output_path(self, job: Job, stream: Stream) -> str:
        chosen = job.spec.stdout if stream == "stdout" else job.spec.stderr
        job_dir = self.job_dir(job)
        if chosen is not None:
            return posixpath.join(job.spec.directory or job_dir, chosen)
        return posixpath.join(job_dir, stream + self._member_suffix(job))

    def exit_code_path(self, job: Job) -> str:
        return posixpath.join(self.job_dir(job), "exitcode" + self._member_suffix(job))

    def job_dir(self, job: Job) -> str:
        return posixpath.join(self.jobs_root(), job.array_id or job.id)

    def jobs_root(self) -> str:
        """Where job directories go: ``work_dir``, or jobbridge's own here, or
        ``~/.jobbridge/jobs`` on a remote host (asked once)."""
        if self._root is None:
            if self.options.work_dir:
                self._root = self.options.work_dir
            elif self.options.host is None:
                self._root = str(self.context.jobs_dir)
            else:
                home = self._run(["sh", "-c", 'printf %s "$HOME"'], idempotent=True).stdout
                self._root = posixpath.join(home, ".jobbridge", "jobs")
        return self._root

    def sandbox(self, job: Job) -> tuple[Transport, str]:
        return self.transport, self.job_dir(job)

    def free(self, job: Job) -> None:
        self.transport.remove_tree(self.job_dir(job))

    def close(self) -> None:
        self.transport.close()

    @staticmethod
    def _member_suffix(job: Job) -> str:
        return "" if job.array_index is None else f".{job.array_index}"

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


def _transport(options: BatchOptions) -> Transport:
    if options.host is None:
        return LocalTransport()
    return SshTransport(
        options.host,
        port=options.port,
        identity_file=options.identity_file,
        known_hosts=options.known_hosts,
        config_file=options.ssh_config,
        options=options.ssh_options,
        connect_timeout=min(30.0, options.command_timeout),
    )


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


def _exit_file_status(content: bytes) -> JobStatus | None:
    fields = content.decode(errors="replace").split()
    if not fields or not fields[0].lstrip("-").isdigit():
        return None
    code = int(fields[0])
    started = _epoch(fields[1]) if len(fields) > 1 else None
    ended = _epoch(fields[2]) if len(fields) > 2 else None
    phase = Phase.COMPLETED if code == 0 else Phase.ERROR
    return JobStatus(phase=phase, exit_code=code, started=started, ended=ended)


def _epoch(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except ValueError:
        return None


def epoch_or_none(text: str) -> datetime | None:
    """A time from a scheduler told to print seconds since the epoch; None for 'Unknown'."""
    text = text.strip()
    return _epoch(text) if text.isdigit() and int(text) > 0 else None


def walltime_parts(seconds: float) -> tuple[int, int, int, int]:
    """Days, hours, minutes, seconds, rounded up to the whole second."""
    total = math.ceil(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return days, hours, minutes, secs


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
