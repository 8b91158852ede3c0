"""Jobs as detached process groups on this machine, started by a per-directory supervisor."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from jobbridge import staging
from jobbridge.backends import containers
from jobbridge.backends import local_supervisor as sup
from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.backends.containers import ContainerOptions
from jobbridge.errors import LimitExceededError, ResourcesNotSupportedError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.push import PushEvent
from jobbridge.spec import JobSpec, Launcher
from jobbridge.transport.base import Transport
from jobbridge.transport.local import LocalTransport

__all__ = ["LocalBackend", "LocalOptions"]

SUPERVISOR = Path(sup.__file__)
STALL = 2.0
"""Seconds a job may wait in the spool before a status query makes sure a supervisor runs."""
WAITING = "waiting for the supervisor to start it"
_RUNTIME_ENV = ("PATH", "HOME", "USER", "LOGNAME", "XDG_RUNTIME_DIR", "TMPDIR", "CONTAINERS_CONF")
"""The host's variables a container runtime itself may need; the container gets none of them."""


class LocalOptions(ContainerOptions):
    min_refresh_interval: float = Field(0.2, ge=0)
    grace_period: float = Field(5.0, ge=0, description="seconds between TERM and KILL")
    start_timeout: float = Field(
        60.0, gt=0, description="a job whose runner has not started after this long is lost"
    )
    cores: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="cores one job may ask for"
    )
    supervisor_idle: float = Field(
        30.0, gt=0, description="seconds without work after which the supervisor leaves"
    )


class LocalBackend(Backend):
    """A submission leaves the job's plan on disk and wakes the supervisor of the jobs
    directory (see ``local_supervisor``), which starts it under a runner that survives
    whoever submitted it, and the supervisor too."""

    kind = "local"
    Options = LocalOptions
    batch_submission = True
    options: LocalOptions

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self.transport = LocalTransport()
        self.supervisor = SupervisorClient(str(context.jobs_dir), self.options.supervisor_idle)

    def check(self, spec: JobSpec) -> None:
        unsupported = {
            "resources.nodes": spec.resources.nodes > 1,
            "resources.gpus_per_process": spec.resources.gpus_per_process > 0,
            "queue": spec.queue is not None,
            "account": spec.account is not None,
            "project": spec.project is not None,
            "reservation": spec.reservation is not None,
            "launcher": spec.launcher is Launcher.SRUN,
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
        containers.check_image(self.name, self.options, spec)
        if spec.resources.cores > self.options.cores:
            raise LimitExceededError(self.name, "cores", spec.resources.cores, self.options.cores)

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        job_dir = self._prepare(job)
        self.supervisor.enqueue(job.id, job_dir)
        return job_dir

    def submit_many(self, jobs: Sequence[Job]) -> list[str | Exception]:
        """Every job's plan and spool entry, with one wake-up of the supervisor per runner's
        worth of jobs (so that the first start while the rest are written)."""
        answers: list[str | Exception] = []
        unannounced = 0
        for job in jobs:
            try:
                job_dir = self._prepare(job)
                self.supervisor.enqueue(job.id, job_dir, wake=False)
            except Exception as error:
                answers.append(error)
                continue
            answers.append(job_dir)
            unannounced += 1
            if unannounced == sup.MAX_BATCH:
                self.supervisor.wake()
                unannounced = 0
        if unannounced:
            self.supervisor.wake()
        return answers

    def _prepare(self, job: Job) -> str:
        """The job's directory with its inputs and its plan in it."""
        job_dir = self._job_dir(job)
        self.transport.make_dirs(job_dir)
        staging.stage_in(self.transport, job_dir, job.spec.stage_in)
        plan = self._plan(job, job_dir)
        self.transport.write_bytes(os.path.join(job_dir, sup.PLAN_FILE), json.dumps(plan).encode())
        return job_dir

    def locate(self, jobs: Sequence[Job]) -> Located:
        """A submission left the job's plan in its directory before it queued the job; one
        cut short in between is queued now, which is safe: a runner claims a job once."""
        found = {}
        for job in jobs:
            job_dir = self._job_dir(job)
            if self.transport.exists(os.path.join(job_dir, sup.PLAN_FILE)):
                found[job.id] = [job_dir]
                if not self.transport.exists(os.path.join(job_dir, sup.RUNNER_FILE)):
                    self.supervisor.enqueue(job.id, job_dir, wake=False)
        if found:
            self.supervisor.wake()
        return Located(found, complete=True)

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        answers: dict[str, JobStatus | Missing] = {}
        stalled = False
        for job in jobs:
            if job.native_id:
                answer = answers[job.id] = self._status(job)
                stalled = stalled or answer.message == WAITING
        if stalled:  # a job long in the spool: its supervisor may have died
            self.supervisor.wake()
        return answers

    def pushed(self, job: Job, event: PushEvent) -> JobStatus | None:
        """The runner's own records of the job: its result, or that it runs."""
        if not job.native_id:
            return None
        return self._status(job)

    def cancel(self, job: Job) -> None:
        assert job.native_id
        self.transport.write_bytes(os.path.join(job.native_id, sup.CANCEL_MARK), b"")
        runner = self._runner(job.native_id)
        if runner is not None and self._alive(runner):
            self.transport.run(["kill", "-s", "TERM", "--", str(runner.pid)], check=False)
        elif runner is None:  # still in the spool: its runner will find the mark
            self.supervisor.wake()

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
        self.supervisor.forget(job.id)
        self.transport.remove_tree(self._job_dir(job))

    def close(self) -> None:
        self.supervisor.close()
        self.transport.close()

    # -- inside -----------------------------------------------------------------------------

    def _job_dir(self, job: Job) -> str:
        return str(self.context.jobs_dir / job.id)

    def _plan(self, job: Job, job_dir: str) -> dict[str, Any]:
        spec = job.spec
        directory = spec.directory or job_dir
        argv = [spec.executable, *spec.arguments]
        if spec.image is None:
            env = self._environment(job, directory)
        else:
            argv, env = self._in_container(job, argv, directory)
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
            # in a container the runtime limits memory (an address-space limit would stop
            # the runtime's own process instead)
            "memory": None if spec.image else spec.resources.memory,
            "grace": self.options.grace_period,
            "argv": argv,
            "env": env,
            "submitted": time.time(),
            "push": self._push_plan(job),
        }

    def _push_plan(self, job: Job) -> dict[str, str] | None:
        """Where the runner tells the service that the job started and ended."""
        push = self.push
        if push is None or not self.options.push:
            return None
        return {"url": push.url_for(job.id), "token": push.token(job.id)}

    def _in_container(
        self, job: Job, argv: list[str], directory: str
    ) -> tuple[list[str], dict[str, str]]:
        """The runtime's command line, and its environment: the job's variables (which the
        container receives by name, not the host's) with what the runtime itself needs."""
        variables = {**job.spec.environment, **self._portable(job, directory)}
        wrapped = containers.wrap(
            self.name,
            self.options,
            job.spec,
            argv,
            variables=variables,
            directories=[self._job_dir(job)],
            workdir=directory,
        )
        program, *words = wrapped.argv
        runtime_env = {name: os.environ[name] for name in _RUNTIME_ENV if name in os.environ}
        runtime_env.update(variables)
        runtime_env.update({alias: variables[name] for alias, name in wrapped.aliases.items()})
        return [shutil.which(program, path=os.environ.get("PATH")) or program, *words], runtime_env

    def _environment(self, job: Job, directory: str) -> dict[str, str]:
        env = dict(os.environ) if job.spec.inherit_environment else {}
        env.update(job.spec.environment)
        env.update(self._portable(job, directory))
        return env

    def _portable(self, job: Job, directory: str) -> dict[str, str]:
        env = dict(
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
            queued = job.queued or job.created
            if time.time() - queued.timestamp() < STALL:  # handed over later still
                return JobStatus(phase=Phase.QUEUED)
            waited = time.time() - self._submitted_at(job_dir)
            if waited < STALL:
                return JobStatus(phase=Phase.QUEUED)
            if waited < self.options.start_timeout:
                return JobStatus(phase=Phase.QUEUED, message=WAITING)
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
        text = self._read_text(os.path.join(job_dir, sup.RESULT_FILE))
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
        text = self._read_text(os.path.join(job_dir, sup.RUNNER_FILE))
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
        text = self._read_text(os.path.join(job_dir, sup.PLAN_FILE))
        return float(json.loads(text)["submitted"]) if text else 0.0

    def _read_text(self, path: str) -> str | None:
        try:
            return self.transport.read_bytes(path).decode()
        except FileNotFoundError:
            return None


class SupervisorClient:
    """Queues jobs for the supervisor of one jobs directory, starting it when none runs."""

    def __init__(self, jobs_dir: str, idle: float) -> None:
        self.jobs_dir = jobs_dir
        self.idle = idle
        self.spool = os.path.join(jobs_dir, sup.SPOOL_DIR)
        self.fifo = os.path.join(jobs_dir, sup.STATE_DIR, sup.WAKE_FIFO)
        self._lock = threading.Lock()
        self._started_at = float("-inf")

    def enqueue(self, job_id: str, job_dir: str, *, wake: bool = True) -> None:
        entry = os.path.join(self.spool, job_id)
        try:
            os.symlink(job_dir, entry)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(self.spool, exist_ok=True)
            os.symlink(job_dir, entry)
        if wake:
            self.wake()

    def forget(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.spool, job_id))

    def wake(self, message: bytes = b"j") -> bool:
        """Tell the supervisor to look at the spool; start one if none listens. True if one
        was listening."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno not in (errno.ENOENT, errno.ENXIO):
                raise
            if message != sup.QUIT:
                self.start()
            return False
        try:
            os.write(fd, message)
        except BlockingIOError:  # full of wake-ups already
            pass
        except BrokenPipeError:  # it left just now
            if message != sup.QUIT:
                self.start()
            return False
        finally:
            os.close(fd)
        return True

    def start(self) -> None:
        """Start a supervisor, at most one every few seconds from this process; a second
        one for the same directory gives way to the first (it holds a lock)."""
        with self._lock:
            now = time.monotonic()
            if now - self._started_at < sup.LOCK_PATIENCE:
                return
            self._started_at = now
        os.makedirs(self.spool, exist_ok=True)
        command = [sys.executable, "-I", "-S", str(SUPERVISOR), self.jobs_dir, repr(self.idle)]
        LocalTransport().spawn(command, cwd="/")

    def close(self) -> None:
        """Let the supervisor leave once the spool is empty (another process that submits
        later starts a new one)."""
        self.wake(sup.QUIT)


@dataclass(frozen=True)
class _RunnerRecord:
    pid: int
    ticks: int
    started: datetime


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
