"""Jobs as detached process groups on this machine."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from jobbridge import staging
from jobbridge.backends import local_runner
from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.errors import LimitExceededError, ResourcesNotSupportedError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec, Launcher
from jobbridge.transport.base import Transport
from jobbridge.transport.local import LocalTransport

__all__ = ["LocalBackend", "LocalOptions"]

RUNNER = Path(local_runner.__file__)


class LocalOptions(BackendOptions):
    min_refresh_interval: float = Field(0.2, ge=0)
    grace_period: float = Field(5.0, ge=0, description="seconds between TERM and KILL")
    start_timeout: float = Field(
        60.0, gt=0, description="a job whose runner has not started after this long is lost"
    )
    cores: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="cores one job may ask for"
    )


class LocalBackend(Backend):
    """Each job is a detached runner process that survives whoever submitted it."""

    kind = "local"
    Options = LocalOptions
    options: LocalOptions

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self.transport = LocalTransport()

    def check(self, spec: JobSpec) -> None:
        unsupported = {
            "resources.nodes": spec.resources.nodes > 1,
            "resources.gpus_per_process": spec.resources.gpus_per_process > 0,
            "queue": spec.queue is not None,
            "account": spec.account is not None,
            "project": spec.project is not None,
            "reservation": spec.reservation is not None,
            "launcher": spec.launcher is Launcher.SRUN,
            "image": spec.image is not None,
        }
        unsupported.update(
            {f"attributes.local.{key}": True for key in spec.attributes_for("local")}
        )
        for field, refused in unsupported.items():
            if refused:
                raise ResourcesNotSupportedError(self.name, field, "not available on this machine")
        problems = staging.validate_data(spec.stage_in)
        if problems:
            raise ResourcesNotSupportedError(self.name, "stage_in", "; ".join(problems))
        if spec.resources.cores > self.options.cores:
            raise LimitExceededError(self.name, "cores", spec.resources.cores, self.options.cores)

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        job_dir = self._job_dir(job)
        self.transport.make_dirs(job_dir)
        staging.stage_in(self.transport, job_dir, job.spec.stage_in)
        plan = self._plan(job, job_dir)
        self.transport.write_bytes(os.path.join(job_dir, "job.json"), json.dumps(plan).encode())
        self.transport.spawn(
            [sys.executable, "-I", "-S", str(RUNNER), *_runner_arguments(plan)],
            env=self._environment(job, plan["directory"]),
            cwd=job_dir,
        )
        return job_dir

    def locate(self, jobs: Sequence[Job]) -> Located:
        """A submission left the job's plan in its directory before starting the runner."""
        found = {}
        for job in jobs:
            job_dir = self._job_dir(job)
            if self.transport.exists(os.path.join(job_dir, "job.json")):
                found[job.id] = [job_dir]
        return Located(found, complete=True)

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        return {job.id: self._status(job) for job in jobs if job.native_id}

    def cancel(self, job: Job) -> None:
        assert job.native_id
        self.transport.write_bytes(os.path.join(job.native_id, local_runner.CANCEL_MARK), b"")
        runner = self._runner(job.native_id)
        if runner is not None and self._alive(runner):
            self.transport.run(["kill", "-s", "TERM", "--", str(runner.pid)], check=False)

    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        try:
            return self.transport.read_bytes(self.output_path(job, stream), offset, size)
        except FileNotFoundError:
            return b""

    def output_path(self, job: Job, stream: Stream) -> str:
        job_dir = job.native_id or self._job_dir(job)
        chosen = getattr(job.spec, stream)
        if chosen is None:
            return os.path.join(job_dir, stream)
        return os.path.join(job.spec.directory or job_dir, chosen)

    def sandbox(self, job: Job) -> tuple[Transport, str]:
        return self.transport, self._job_dir(job)

    def free(self, job: Job) -> None:
        self.transport.remove_tree(self._job_dir(job))

    def close(self) -> None:
        self.transport.close()

    # -- inside -----------------------------------------------------------------------------

    def _job_dir(self, job: Job) -> str:
        return str(self.context.jobs_dir / job.id)

    def _plan(self, job: Job, job_dir: str) -> dict[str, Any]:
        spec = job.spec
        directory = spec.directory or job_dir
        argv = [spec.executable, *spec.arguments]
        if spec.prologue or spec.epilogue:
            argv = _with_prologue(argv, spec.prologue, spec.epilogue)
        if spec.launcher is Launcher.MPIRUN:
            argv = ["mpirun", "-np", str(spec.resources.processes), *argv]
        walltime = spec.resources.walltime
        return {
            "job_dir": job_dir,
            "directory": directory,
            "stdin": spec.stdin and os.path.join(directory, spec.stdin),
            "stdout": self.output_path(job, "stdout"),
            "stderr": self.output_path(job, "stderr"),
            "walltime": walltime and walltime.total_seconds(),
            "memory": spec.resources.memory,
            "grace": self.options.grace_period,
            "argv": argv,
            "submitted": time.time(),
        }

    def _environment(self, job: Job, directory: str) -> dict[str, str]:
        env = dict(os.environ) if job.spec.inherit_environment else {}
        env.update(job.spec.environment)
        env.update(
            JOBBRIDGE_JOB_ID=job.id,
            JOBBRIDGE_JOB_NAME=job.name,
            JOBBRIDGE_WORKDIR=directory,
            JOBBRIDGE_SUBMIT_HOST=self.transport.host,
            JOBBRIDGE_NODELIST=self.transport.host,
        )
        if job.array_index is not None:
            env["JOBBRIDGE_ARRAY_INDEX"] = str(job.array_index)
        return env

    def _status(self, job: Job) -> JobStatus:
        job_dir = job.native_id or ""
        result = self._result(job_dir)
        if result is not None:
            return result
        runner = self._runner(job_dir)
        if runner is None:
            if time.time() - self._submitted_at(job_dir) < self.options.start_timeout:
                return JobStatus(phase=Phase.QUEUED)
            said = (self._read_text(os.path.join(job_dir, "runner.log")) or "").strip()
            return JobStatus(
                phase=Phase.ERROR, detail="LOST", message=f"the runner never started {said}".strip()
            )
        if self._alive(runner):
            return JobStatus(phase=Phase.EXECUTING, started=runner.started)
        # it may have finished between the two reads
        said = (self._read_text(os.path.join(job_dir, "runner.log")) or "").strip()
        return self._result(job_dir) or JobStatus(
            phase=Phase.ERROR,
            detail="LOST",
            message=(
                "the job's runner is gone without a result (killed, or the machine restarted) "
                + said
            ).strip(),
            started=runner.started,
        )

    def _result(self, job_dir: str) -> JobStatus | None:
        text = self._read_text(os.path.join(job_dir, local_runner.RESULT_FILE))
        if text is None:
            return None
        head, _, message = text.partition("message=")
        fields = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
        detail = fields.get("detail") or None
        code = int(fields["exit_code"]) if fields.get("exit_code") else None
        if detail == "CANCELLED":
            phase = Phase.ABORTED
        elif code == 0 and detail is None:
            phase = Phase.COMPLETED
        else:
            phase = Phase.ERROR
        return JobStatus(
            phase=phase,
            detail=detail,
            message=message or None,
            exit_code=code,
            started=_time(float(fields["started"])),
            ended=_time(float(fields["ended"])),
        )

    def _runner(self, job_dir: str) -> _RunnerRecord | None:
        text = self._read_text(os.path.join(job_dir, local_runner.RUNNER_FILE))
        if not text:
            return None
        pid, ticks, started = text.split()
        return _RunnerRecord(int(pid), int(ticks), _time(float(started)))

    def _alive(self, runner: _RunnerRecord) -> bool:
        try:
            stat = self.transport.read_bytes(f"/proc/{runner.pid}/stat").decode()
        except (FileNotFoundError, ProcessLookupError):
            return False
        fields = stat.rsplit(")", 1)[1].split()
        return fields[0] != "Z" and int(fields[19]) == runner.ticks

    def _submitted_at(self, job_dir: str) -> float:
        text = self._read_text(os.path.join(job_dir, "job.json"))
        return float(json.loads(text)["submitted"]) if text else 0.0

    def _read_text(self, path: str) -> str | None:
        try:
            return self.transport.read_bytes(path).decode()
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class _RunnerRecord:
    pid: int
    ticks: int
    started: datetime


def _runner_arguments(plan: dict[str, Any]) -> list[str]:
    def text(value: object) -> str:
        return "" if value is None else str(value)

    fields = ("job_dir", "directory", "stdin", "stdout", "stderr", "walltime", "memory", "grace")
    return [*(text(plan[field]) for field in fields), "--", *plan["argv"]]


def _with_prologue(argv: list[str], prologue: str | None, epilogue: str | None) -> list[str]:
    # The program's words travel as positional parameters, never as shell text.
    script = "\n".join(
        [
            "jobbridge_prologue() {",
            prologue or ":",
            "}",
            "jobbridge_epilogue() {",
            epilogue or ":",
            "}",
            "jobbridge_prologue || exit $?",
            '"$@"',
            "jobbridge_status=$?",
            "jobbridge_epilogue",
            "exit $jobbridge_status",
        ]
    )
    return ["/bin/sh", "-c", script, "jobbridge-job", *argv]


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
