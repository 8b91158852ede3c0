"""The files a job leaves in its directory: where they are, the exit-code file its script
writes (``exitcode[.INDEX]``: code, start, end), the ``.term`` note of a script the scheduler
ended with TERM, and its output, with what the scheduler captured around it."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from jobbridge.backends.base import BackendContext, BackendOptions, Missing, Stream
from jobbridge.backends.batch.core import BatchCore
from jobbridge.backends.batch.native import from_epoch
from jobbridge.errors import JobbridgeError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.transport.base import Transport

__all__ = ["JobFiles", "exit_file_status"]

log = logging.getLogger(__name__)

_WORDS_LIMIT = 4096
"""Bytes read of what the scheduler captured, for the message of a job in ERROR."""


class JobFiles(BatchCore):
    """Where a job's files are, and reading what its script and the scheduler left there."""

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self._root: str | None = None

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

    @staticmethod
    def _member_suffix(job: Job) -> str:
        return "" if job.array_index is None else f".{job.array_index}"

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
            status = exit_file_status(content)
            if status is None:
                self.warn_once(
                    files[path], f"exit-code file {path} is unreadable: {content[:40]!r}"
                )
                continue
            found[files[path]] = status
        return found

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


def exit_file_status(content: bytes) -> JobStatus | None:
    fields = content.decode(errors="replace").split()
    if not fields or not fields[0].lstrip("-").isdigit():
        return None
    code = int(fields[0])
    started = from_epoch(fields[1]) if len(fields) > 1 else None
    ended = from_epoch(fields[2]) if len(fields) > 2 else None
    phase = Phase.COMPLETED if code == 0 else Phase.ERROR
    return JobStatus(phase=phase, exit_code=code, started=started, ended=ended)
