"""Jobs as detached process groups on this machine, started by a per-directory supervisor."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from jobbridge import staging
from jobbridge.backends import containers, local_runner
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
from jobbridge.backends.local_records import RunnerRecords, ended_status, from_epoch
from jobbridge.errors import LimitExceededError, ResourcesNotSupportedError
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.push import PushEvent
from jobbridge.spec import JobSpec, Launcher
from jobbridge.transport.base import Transport
from jobbridge.transport.local import LocalTransport

log = logging.getLogger(__name__)

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
    handover_threads = os.cpu_count() or 1
    """Handing over is work for this machine's processors (directories, files, records):
    threads beyond them only contend for the interpreter and the store's write lock."""
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
        """A job whose plans did not reach the spool is withdrawn: it counts as handed over
        only with its plans in its directory, and a later handover writes them anew."""
        job_dir = self._prepare(job)
        plans = os.path.join(job_dir, local_runner.PLANS_FILE)
        self.transport.write_bytes(plans, _plans_file([self._plan(job, job_dir)]))
        try:
            self.supervisor.enqueue(plans, job.id)
        except OSError:
            _withdraw(job_dir)
            raise
        return job_dir

    def submit_many(self, jobs: Sequence[Job]) -> list[str | Exception]:
        """The jobs in batches of one runner's worth, each batch's plans in one file linked
        into every job's directory, and one wake-up of the supervisor per batch (so that
        the first batch starts while the next is written)."""
        answers: list[str | Exception] = []
        for first in range(0, len(jobs), sup.MAX_BATCH):
            answers.extend(self._submit_batch(jobs[first : first + sup.MAX_BATCH]))
        return answers

    def _submit_batch(self, jobs: Sequence[Job]) -> list[str | Exception]:
        answers: list[str | Exception] = []
        prepared: list[tuple[Job, str, dict[str, Any]]] = []
        for job in jobs:
            try:
                job_dir = self._prepare(job)
                prepared.append((job, job_dir, self._plan(job, job_dir)))
            except Exception as error:
                answers.append(error)
                continue
            answers.append(job_dir)
        if not prepared:
            return answers
        first, first_dir, _ = prepared[0]
        plans = os.path.join(first_dir, local_runner.PLANS_FILE)
        failed: dict[str, Exception] = {}
        try:
            self.transport.write_bytes(plans, _plans_file([plan for _, _, plan in prepared]))
            for _, job_dir, _ in prepared[1:]:
                try:  # from here on the job is handed over: its runner takes it from this file
                    os.link(plans, os.path.join(job_dir, local_runner.PLANS_FILE))
                except OSError as error:
                    failed[job_dir] = error
            self.supervisor.enqueue(plans, sup.spool_name(first.id, len(prepared)))
        except OSError as error:  # not spooled: not handed over either
            for _, job_dir, _ in prepared:
                _withdraw(job_dir)
            return [error if isinstance(answer, str) else answer for answer in answers]
        return [failed.get(answer, answer) if isinstance(answer, str) else answer
                for answer in answers]  # fmt: skip

    def _prepare(self, job: Job) -> str:
        """The job's directory with its inputs in it."""
        job_dir = self._job_dir(job)
        self.transport.make_dirs(job_dir)
        staging.stage_in(self.transport, job_dir, job.spec.stage_in)
        return job_dir

    def locate(self, jobs: Sequence[Job]) -> Located:
        """A submission left the job's plan in its directory before it queued the job; one
        cut short in between is queued now, which is safe: a runner claims a job once."""
        found = {}
        for job in jobs:
            job_dir = self._job_dir(job)
            plans = os.path.join(job_dir, local_runner.PLANS_FILE)
            if os.path.exists(plans):
                found[job.id] = [job_dir]
                if not os.path.exists(os.path.join(job_dir, local_runner.RUNNER_FILE)):
                    self.supervisor.enqueue(plans, job.id, wake=False)
        if found:
            self.supervisor.wake_if_possible()
        return Located(found, complete=True)

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        answers: dict[str, JobStatus | Missing] = {}
        records = RunnerRecords()  # jobs started together share one
        stalled = False
        for job in jobs:
            if job.native_id:
                answer = answers[job.id] = self._status(job, records)
                stalled = stalled or answer.message == WAITING
        if stalled:  # a job long in the spool: its supervisor may have died
            self.supervisor.wake_if_possible()
        return answers

    def pushed(self, job: Job, event: PushEvent) -> JobStatus | None:
        """The runner's own records of the job: its result, or that it runs."""
        if not job.native_id:
            return None
        return self._status(job, RunnerRecords())

    def cancel(self, job: Job) -> None:
        assert job.native_id
        self.transport.write_bytes(os.path.join(job.native_id, local_runner.CANCEL_MARK), b"")
        record = RunnerRecords().read(job.native_id)
        if record is not None and record.alive:
            self.transport.run(["kill", "-s", "TERM", "--", str(record.pid)], check=False)
        elif record is None:  # still in the spool: its runner will find the mark
            self.supervisor.wake_if_possible()

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

    def news(self) -> int | None:
        return self.supervisor.listen()

    def read_news(self) -> list[str]:
        return self.supervisor.read_news()

    def close(self) -> None:
        self.supervisor.close()
        self.transport.close()

    # -- inside -----------------------------------------------------------------------------

    def _job_dir(self, job: Job) -> str:
        return os.path.join(self.context.jobs_dir, job.id)

    def _plan(self, job: Job, job_dir: str) -> dict[str, Any]:
        """What the runner needs to start the job."""
        spec = job.spec
        directory = spec.directory or job_dir
        argv = [spec.executable, *spec.arguments]
        inherit = spec.image is None and spec.inherit_environment
        if spec.image is None:
            env = {**spec.environment, **self._portable(job, directory)}
        else:
            argv, env = self._in_container(job, argv, directory)
        if spec.prologue or spec.epilogue:
            argv = _with_prologue(argv, spec.prologue, spec.epilogue)
        if spec.launcher is Launcher.MPIRUN:
            argv = ["mpirun", "-np", str(spec.resources.processes), *argv]
        walltime = spec.resources.walltime
        return {
            "id": job.id,
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
            # not "env", which a runner of an earlier version would take for the whole
            # environment: under one, the job fails instead of running without it
            "environment": env,
            "inherit": inherit,
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

    def _status(self, job: Job, records: RunnerRecords) -> JobStatus:
        job_dir = job.native_id or ""
        record = records.read(job_dir)
        if record is None:
            return self._not_started(job, job_dir)
        if job.id not in record.ended and not record.alive:
            record = records.read(job_dir, again=True)  # it may have ended since
            assert record is not None
        outcome = record.ended.get(job.id)
        if outcome is not None:
            return ended_status(outcome)
        started = from_epoch(record.started[job.id]) if job.id in record.started else None
        if record.alive:
            return JobStatus(phase=Phase.EXECUTING, started=started)
        said = (self._read_text(os.path.join(job_dir, "runner.log")) or "").strip()
        return JobStatus(
            phase=Phase.ERROR,
            detail="LOST",
            message=(
                "the job's runner is gone without a result (killed, or the machine restarted) "
                + said
            ).strip(),
            started=started,
        )

    def _not_started(self, job: Job, job_dir: str) -> JobStatus:
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

    def _submitted_at(self, job_dir: str) -> float:
        """When the job was handed over: its plans file was written then, and never since."""
        try:
            return os.stat(os.path.join(job_dir, local_runner.PLANS_FILE)).st_mtime
        except FileNotFoundError:
            return 0.0

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
        self._news: int | None = None

    def enqueue(self, plans: str, name: str, *, wake: bool = True) -> None:
        """Hand the jobs of a plans file over: link it into the spool as ``name``."""
        entry = os.path.join(self.spool, name)
        try:
            os.link(plans, entry)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(self.spool, exist_ok=True)
            os.link(plans, entry)
        if wake:
            self.wake_if_possible()

    def wake_if_possible(self) -> None:
        """``wake``, for jobs in the spool already: a failure to wake only delays them (a
        status query that finds them waiting wakes the supervisor again)."""
        try:
            self.wake()
        except OSError as error:
            log.warning("could not wake the supervisor of %s: %s", self.jobs_dir, error)

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

    def listen(self) -> int | None:
        """The read end of the FIFO where runners tell of each outcome (see
        ``local_runner``); None if it cannot be made."""
        with self._lock:
            if self._news is None:
                state = os.path.dirname(self.fifo)
                ended = os.path.join(state, local_runner.ENDED_FIFO)
                try:
                    os.makedirs(state, exist_ok=True)
                    with contextlib.suppress(FileExistsError):
                        os.mkfifo(ended, 0o600)
                    # read and write: a FIFO whose last writer left reads as ended for good
                    self._news = os.open(ended, os.O_RDWR | os.O_NONBLOCK)
                except OSError as error:
                    log.warning("no news of ended jobs from %s: %s", self.jobs_dir, error)
            return self._news

    def read_news(self) -> list[str]:
        """The ids of the jobs whose runners told of their ends since the last read (each
        told in one write of one line, which a pipe never splits)."""
        if self._news is None:
            return []
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._news, 65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").split()

    def close(self) -> None:
        """Let the supervisor leave once the spool is empty (another process that submits
        later starts a new one)."""
        self.wake(sup.QUIT)
        with self._lock:
            if self._news is not None:
                os.close(self._news)
                self._news = None


def _plans_file(plans: list[dict[str, Any]]) -> bytes:
    """One JSON line per plan, after the environment of this process once, which jobs
    that inherit it start from (sent once, not in every plan)."""
    lines = [json.dumps(plan) for plan in plans]
    if any(plan["inherit"] for plan in plans):
        lines.insert(0, json.dumps({local_runner.INHERITED: dict(os.environ)}))
    return "".join(line + "\n" for line in lines).encode()


def _withdraw(job_dir: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(job_dir, local_runner.PLANS_FILE))


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
