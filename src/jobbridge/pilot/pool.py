"""A pilot pool as a backend: jobs given to it run as work units on pilots that the
coordinating process keeps running, so short jobs skip the batch queue. Anything that takes a
backend name (a UWS job definition's ``backend:``, ``jobbridge submit --backend``) takes a
pool::

    [backends.quick]
    kind = "pilot"
    pilot_backend = "slurm"     # a configured backend: where the pilots run
    pilots = 2                  # kept running, replaced when they end
    cores = 8                   # of each pilot
    walltime = "4:00:00"

A job is recorded as a work unit whose id is the job's, by whichever process submits it
(so a submission sent twice makes one unit); the process that holds the store's pilot lease
takes new units up, binds them, and carries out cancels asked for by others. The job's
directory is the one its id would have on ``pilot_backend``, so its files, stdout and stderr
are read as for any job there; its phase is its unit's state, read from the store.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field

from jobbridge import staging
from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.errors import (
    BackendError,
    ConfigError,
    LimitExceededError,
    ResourcesNotSupportedError,
)
from jobbridge.job import Job, JobStatus, utcnow
from jobbridge.phase import Phase
from jobbridge.pilot.description import PilotJobDescription, WorkUnitDescription
from jobbridge.pilot.records import SUBMITTED
from jobbridge.spec import JobSpec, Launcher, Memory, Walltime
from jobbridge.store.pilots import PilotStore
from jobbridge.transport.base import Transport

if TYPE_CHECKING:
    from jobbridge.engine import Engine

__all__ = ["PilotPoolBackend", "PilotPoolOptions"]


class PilotPoolOptions(BackendOptions):
    min_refresh_interval: float = Field(
        0.25, ge=0, description="seconds between two looks at the pool's units in the store"
    )
    pilot_backend: str = Field(
        "local", description="the configured backend the pool's pilots run on (and its jobs'"
        " directories are on)",
    )  # fmt: skip
    pilots: int = Field(1, ge=1, description="pilots kept running; one that ends is replaced")
    cores: int = Field(1, ge=1, description="cores of each pilot")
    cores_per_node: int | None = Field(None, ge=1, description="a pilot of more spans nodes")
    walltime: Walltime | None = Field(None, description="of each pilot")
    memory: Memory | None = Field(None, description="of each pilot")
    queue: str | None = None
    project: str | None = None
    python: str | None = Field(None, description="the interpreter on the resource")
    drain_margin: float = Field(
        10.0, ge=0, description="seconds before its walltime when a pilot takes no more jobs"
    )
    retries: int = Field(
        3, ge=0, description="how often a job whose pilot ended while it ran starts again"
    )


class PilotPoolBackend(Backend):
    kind = "pilot"
    Options = PilotPoolOptions
    options: PilotPoolOptions

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        self.unit_service_id = f"pool-{digest}"
        self.pilot_service_id = f"pilots-{digest}"
        self._engine: Engine | None = None
        self._records: PilotStore | None = None
        self._ensured = False

    def attach(self, engine: Engine) -> None:
        home = engine.backends.get(self.options.pilot_backend)
        if home is None:
            known = ", ".join(sorted(engine.backends))
            raise ConfigError(
                f"backend {self.name!r}: pilot_backend {self.options.pilot_backend!r} is not"
                f" a configured backend ({known})"
            )
        if isinstance(home, PilotPoolBackend):
            raise ConfigError(f"backend {self.name!r}: pilots cannot run on a pilot pool")
        self._engine = engine
        self._records = PilotStore(engine.store)

    # -- the pool --------------------------------------------------------------------------

    @property
    def records(self) -> PilotStore:
        if self._records is None:
            raise BackendError(f"backend {self.name!r} is not attached to an engine")
        return self._records

    def home(self) -> Backend:
        """The backend the pilots run on."""
        if self._engine is None:
            raise BackendError(f"backend {self.name!r} is not attached to an engine")
        return self._engine.backend(self.options.pilot_backend)

    def pilot_description(self) -> PilotJobDescription:
        options = self.options
        return PilotJobDescription(
            total_cpu_count=options.cores,
            processes_per_host=options.cores_per_node,
            wall_time_limit=options.walltime,
            total_physical_memory=options.memory,
            queue=options.queue,
            project=options.project,
            python=options.python,
            drain_margin=options.drain_margin,
        )

    def ensure(self) -> None:
        """The pool's work unit service and pilot job service exist in the store."""
        if not self._ensured:
            self.records.ensure_pool(
                self.name, self.unit_service_id, self.pilot_service_id, self.options.retries,
                utcnow(),
            )  # fmt: skip
            self._ensured = True

    # -- the backend -----------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        resources = spec.resources
        refused = {
            "resources.nodes": resources.nodes > 1,
            "resources.processes_per_node": resources.processes_per_node > 1,
            "resources.gpus_per_process": resources.gpus_per_process > 0,
            "queue": spec.queue is not None,
            "account": spec.account is not None,
            "project": spec.project is not None,
            "reservation": spec.reservation is not None,
            "launcher": spec.launcher is not Launcher.SINGLE,
            "prologue": bool(spec.prologue),
            "epilogue": bool(spec.epilogue),
            "image": spec.image is not None,
            "inherit_environment": not spec.inherit_environment,
            "attributes": bool(spec.attributes),
        }
        for field, is_refused in refused.items():
            if is_refused:
                raise ResourcesNotSupportedError(
                    self.name, field, "a job on a pilot pool runs as one process in a pilot"
                )
        problems = staging.validate_data(spec.stage_in)
        if problems:
            raise ResourcesNotSupportedError(self.name, "stage_in", "; ".join(problems))
        per_pilot = self.pilot_description()
        if resources.cores > per_pilot.cores_per_node:
            raise LimitExceededError(
                self.name, "cores of a pilot node", resources.cores, per_pilot.cores_per_node
            )
        memory = self.options.memory
        if memory is not None and resources.memory is not None and resources.memory > memory:
            raise LimitExceededError(self.name, "memory of a pilot", resources.memory, memory)
        walltime = self.options.walltime
        if walltime is not None and resources.walltime is not None:
            usable = walltime.total_seconds() - self.options.drain_margin
            if resources.walltime.total_seconds() > usable:
                raise LimitExceededError(
                    self.name, "walltime of a pilot, less its drain_margin",
                    f"{resources.walltime.total_seconds():g} s", f"{usable:g} s",
                )  # fmt: skip

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        self.ensure()
        transport, root = self.sandbox(job)
        transport.make_dirs(root)
        staging.stage_in(transport, root, job.spec.stage_in)
        description = self._unit_description(job, root)
        self.records.add_unit_once(
            {
                "id": job.id,
                "service_id": self.unit_service_id,
                "seq": self.records.next_seq(self.unit_service_id),
                "description": description.model_dump(mode="json"),
                "cores": description.cores,
                "phase": Phase.QUEUED.value,
                "detail": SUBMITTED,
                "created": utcnow(),
            }
        )
        return job.id

    def _unit_description(self, job: Job, root: str) -> WorkUnitDescription:
        spec = job.spec
        directory = os.path.join(root, spec.directory) if spec.directory else root
        environment = {
            **spec.environment,
            "JOBBRIDGE_JOB_ID": job.id,
            "JOBBRIDGE_JOB_NAME": spec.name or job.id,
            "JOBBRIDGE_WORKDIR": directory,
            "JOBBRIDGE_SUBMIT_HOST": socket.gethostname(),
        }
        return WorkUnitDescription(
            executable=spec.executable,
            arguments=spec.arguments,
            environment=environment,
            working_directory=directory,
            input=spec.stdin,
            output=spec.stdout or "stdout",
            error=spec.stderr or "stderr",
            total_cpu_count=spec.resources.cores,
            wall_time_limit=spec.resources.walltime,
        )

    def locate(self, jobs: Sequence[Job]) -> Located:
        found = self.records.units_by_id([job.id for job in jobs])
        return Located({unit_id: [unit_id] for unit_id in found}, complete=True)

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        rows = self.records.units_by_id([job.id for job in jobs if job.native_id])
        answers: dict[str, JobStatus | Missing] = {}
        for job in jobs:
            if not job.native_id:
                continue
            row = rows.get(job.id)
            answers[job.id] = (
                Missing("the pool has no work unit for it") if row is None else _status(row)
            )
        return answers

    def cancel(self, job: Job) -> None:
        self.records.ask_cancel(job.id)

    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        transport, root = self.sandbox(job)
        spec = job.spec
        directory = os.path.join(root, spec.directory) if spec.directory else root
        chosen = getattr(spec, stream) or stream
        try:
            return transport.read_bytes(os.path.join(directory, chosen), offset, size)
        except FileNotFoundError:
            return b""

    def sandbox(self, job: Job) -> tuple[Transport, str]:
        return self.home().sandbox(job)

    def free(self, job: Job) -> None:
        transport, root = self.sandbox(job)
        transport.remove_tree(root)


def _status(row: dict[str, Any]) -> JobStatus:
    phase = Phase(row["phase"])
    detail = None if row["detail"] == SUBMITTED else row["detail"]
    return JobStatus(
        phase=phase,
        detail=detail,
        message=row["message"],
        exit_code=row["exit_code"],
        started=row["started"],
        ended=row["ended"],
    )
