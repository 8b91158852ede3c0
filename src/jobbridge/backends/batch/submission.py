"""Handing a job to a scheduler: the checks before, the job script and its files, one
command that unpacks them and submits, and what a failed submission may have done."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from jobbridge import staging
from jobbridge.backends import containers
from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.jobfiles import JobFiles
from jobbridge.backends.batch.pushing import push_values
from jobbridge.backends.batch.script import render, shell
from jobbridge.errors import (
    CommandFailed,
    JobbridgeError,
    ResourcesNotSupportedError,
    SubmissionError,
    SubmitOutcome,
)
from jobbridge.job import Job
from jobbridge.spec import JobSpec, Launcher
from jobbridge.transport.base import FILES_NOT_WRITTEN, CommandResult

__all__ = ["Submission"]

_PASSING_TROUBLE = ("No space left on device", "Disk quota exceeded", "Resource temporarily")


class Submission(JobFiles):
    """Checking, rendering and submitting a job, and sorting out failed submissions."""

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
