"""The one seam to compute resources: what every backend does."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobbridge.errors import BackendError, LimitExceededError
from jobbridge.job import Job, JobStatus
from jobbridge.push import PushAddress, PushEvent
from jobbridge.spec import JobSpec, Memory, Walltime
from jobbridge.transport.base import Transport

if TYPE_CHECKING:
    from jobbridge.engine import Engine
    from jobbridge.secrets import SecretValues

__all__ = [
    "Backend",
    "BackendContext",
    "BackendOptions",
    "Located",
    "Missing",
    "NativeDependency",
    "Stream",
]

Stream = Literal["stdout", "stderr"]


class BackendOptions(BaseModel):
    """Options every backend takes; subclasses add their own. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_jobs_in_flight: int | None = Field(
        None, ge=1, description="jobs handed to the backend at once; the rest wait in jobbridge"
    )
    min_refresh_interval: float = Field(
        1.0, ge=0, description="seconds between two status queries, to spare the scheduler"
    )
    max_cores_per_job: int | None = Field(None, ge=1)
    max_memory_per_core: Memory | None = None
    max_walltime: Walltime | None = None
    max_cores_in_flight: int | None = Field(
        None, ge=1, description="cores of all jobs handed over at once; the rest wait"
    )
    lost_after: float = Field(
        120.0,
        ge=0,
        description="seconds a job must stay unknown to every source of the backend before it"
        " is declared LOST",
    )
    lost_after_misses: int = Field(
        3, ge=1, description="status queries in a row that must miss a job before it is LOST"
    )
    push: bool = Field(
        True,
        description="jobs tell the service when they start and end (where a service runs);"
        " false for nodes that cannot reach it",
    )


@dataclass(frozen=True)
class BackendContext:
    """What jobbridge tells a backend about its surroundings."""

    jobs_dir: Path


@dataclass(frozen=True)
class NativeDependency:
    """A dependency for the scheduler to enforce: run after ``native_id`` per ``condition``."""

    native_id: str
    condition: str


@dataclass(frozen=True)
class Missing:
    """A status answer: every source the backend has (its queue, its accounting, the job's
    own exit-code file) answered, and none knows the job. Not an ending by itself: the
    engine counts such answers and declares the job LOST only after a grace."""

    reason: str


@dataclass(frozen=True)
class Located:
    """What a backend knows of jobs whose submission had an unknown outcome."""

    found: dict[str, list[str]]
    """Job id -> the native ids that carry its mark (more than one: duplicates)."""
    complete: bool
    """True if a job left out of ``found`` is certainly unknown to the backend; False if
    part of the search failed, so that absence proves nothing."""


class Backend(ABC):
    """Runs jobs somewhere. One instance per configured backend name."""

    kind: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    native_arrays: ClassVar[bool] = False
    native_dependencies: ClassVar[bool] = False
    """True if the backend can be handed a job whose parents it still runs."""
    native_conditions: ClassVar[frozenset[str]] = frozenset({"afterok", "afterany", "afternotok"})
    """With ``native_dependencies``: the conditions it enforces; for others jobbridge waits."""
    delivers_secrets: ClassVar[bool] = False
    """True if the backend hands a job its secrets itself (``submit_with_secrets``); else
    they go through the job's directory (``sandbox``)."""
    batch_submission: ClassVar[bool] = False
    """True if ``submit_many`` hands many jobs over for much less than one by one."""
    handover_threads: int | None = None
    """Threads that may hand jobs over at once at most, whatever the engine allows; None:
    as many as it allows (a backend whose handovers wait on commands or the network)."""

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        self.name = name
        self.options = options
        self.context = context
        self.push: PushAddress | None = None
        """Where jobs submitted from now on push to (see ``jobbridge.push``); None: they
        do not, and only polling finds their news."""

    def attach(self, engine: Engine) -> None:  # noqa: B027 - most backends stand alone
        """Called once the engine serving this backend has all its backends: a backend
        built on the store or on other backends (a pilot pool) takes what it needs here."""

    @property
    def search_delay(self) -> float:
        """Seconds after a submission of unknown outcome before the backend's not knowing the
        job proves that it never arrived (records may reach the backend's lists late)."""
        return 0.0

    def check_limits(self, spec: JobSpec) -> None:
        """Refuse a job beyond this backend's configured limits, naming the limit."""
        options, resources = self.options, spec.resources
        cores = resources.cores
        if options.max_cores_per_job is not None and cores > options.max_cores_per_job:
            raise LimitExceededError(
                self.name, "max_cores_per_job", cores, options.max_cores_per_job
            )
        if options.max_cores_in_flight is not None and cores > options.max_cores_in_flight:
            raise LimitExceededError(
                self.name, "max_cores_in_flight", cores, options.max_cores_in_flight
            )
        if options.max_memory_per_core is not None and resources.memory is not None:
            per_core = resources.memory / cores
            if per_core > options.max_memory_per_core:
                raise LimitExceededError(
                    self.name, "max_memory_per_core", f"{per_core:.0f} bytes",
                    f"{options.max_memory_per_core} bytes",
                )  # fmt: skip
        walltime = resources.walltime
        if (
            options.max_walltime is not None
            and walltime is not None
            and walltime > options.max_walltime
        ):
            raise LimitExceededError(self.name, "max_walltime", walltime, options.max_walltime)

    def sandbox(self, job: Job) -> tuple[Transport, str]:
        """Where the job's directory is: the transport that reaches it, and its path."""
        raise BackendError(f"backend {self.name!r} keeps no job directory")

    def check(self, spec: JobSpec) -> None:  # noqa: B027 - accepting everything is a valid default
        """Raise ``ResourcesNotSupportedError`` or ``LimitExceededError`` before anything is
        stored or sent, if this backend cannot run ``spec`` as asked."""

    @abstractmethod
    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        """Hand one job over; return the backend's own id for it. ``dependencies`` come only
        to a backend with ``native_dependencies``."""

    def submit_with_secrets(
        self,
        job: Job,
        secrets: SecretValues,
        dependencies: Sequence[NativeDependency] = (),
    ) -> str:
        """``submit``, handing the job its decrypted ``secrets`` (a backend that
        ``delivers_secrets``). No value may reach a log, an event or an error message."""
        raise BackendError(f"backend {self.name!r} cannot hand secrets to a job")

    def remove_secrets(self, job: Job) -> None:  # noqa: B027 - nothing delivered, nothing to do
        """Take an ended job's secrets away (a backend that ``delivers_secrets``)."""

    def submit_many(self, jobs: Sequence[Job]) -> list[str | Exception]:
        """Hand over many jobs without native dependencies; for each, in order, its native
        id or the error that kept it back (as ``submit`` would have raised it). One job's
        failure never keeps the others back."""
        answers: list[str | Exception] = []
        for job in jobs:
            try:
                answers.append(self.submit(job))
            except Exception as error:
                answers.append(error)
        return answers

    def submit_array(
        self, jobs: Sequence[Job], dependencies: Sequence[NativeDependency] = ()
    ) -> list[str]:
        """Hand all members of one array over in one go (only if ``native_arrays``)."""
        raise BackendError(f"backend {self.name!r} has no native arrays")

    @abstractmethod
    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        """Answer for many submitted jobs with as few queries as possible, keyed by job id.
        A job left out has no news (one whose record could not be read, say). Raise only
        if the query as a whole failed."""

    @abstractmethod
    def cancel(self, job: Job) -> None:
        """Ask the backend to stop a submitted job."""

    def pushed(self, job: Job, event: PushEvent) -> JobStatus | None:
        """What the job's own records, or one targeted status query, say of a job that
        pushed ``event``: never the push itself. None if they say nothing yet."""
        said = self.status([job]).get(job.id)
        return said if isinstance(said, JobStatus) else None

    @abstractmethod
    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        """Bytes of the job's stdout or stderr; a negative offset counts from the end."""

    def hold(self, job: Job) -> None:
        """Keep a queued job from starting until ``release``."""
        raise BackendError(f"backend {self.name!r} cannot hold jobs")

    def release(self, job: Job) -> None:
        raise BackendError(f"backend {self.name!r} cannot hold jobs")

    def locate(self, jobs: Sequence[Job]) -> Located:
        """Find the native jobs that submissions of ``jobs`` created, by the mark each
        submission carries, in as few queries as possible. Raise if the search failed as a
        whole; a backend that cannot search answers that it found nothing, incompletely."""
        return Located({}, complete=False)

    def news(self) -> int | None:
        """A file descriptor that becomes readable when some of this backend's jobs may have
        ended (told by the jobs' own side), so that a caller waiting for jobs asks about
        them at once; None if the backend tells nothing and must be asked at each polling
        tick."""
        return None

    def read_news(self) -> list[str]:
        """The ids of the jobs that made ``news`` readable (a hint: ask about them)."""
        return []

    def free(self, job: Job) -> None:  # noqa: B027 - nothing left behind is a valid default
        """Remove whatever the ended job left on the resource."""

    def close(self) -> None:  # noqa: B027
        pass
