"""Every error jobbridge raises on purpose.

    JobbridgeError
    ├── SpecError                 a job spec that cannot run anywhere
    ├── ConfigError               a configuration file or value that makes no sense
    ├── UnknownBackendError       a backend name nobody registered (names the known ones)
    ├── ResourcesNotSupportedError  a backend cannot encode a requested resource
    ├── LimitExceededError        a request beyond a backend's configured limits
    ├── JobNotFoundError          no job with that id in the store
    ├── InvalidTransitionError    a phase change that would move a job backwards
    ├── JobStateError             an action that the job's phase does not allow
    ├── BackendError              a backend could not do what was asked
    │   └── SubmissionError       a submission without a native id, and what is known of it
    └── TransportError            a command or file transfer failed
        ├── CommandFailed         the command ran and exited non-zero
        ├── CommandTimeout        the command did not finish in time
        └── ConnectionLost        the way to the command broke while it may have been running

Errors coming from third-party code are converted where they enter jobbridge. ``retryable``
tells callers whether trying the same thing again later can help; ``may_have_run`` on a
transport error, whether the command may have taken effect although no answer came back (so
that repeating it could do it twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum


class JobbridgeError(Exception):
    retryable: bool = False


class SpecError(JobbridgeError, ValueError):
    pass


class ConfigError(JobbridgeError, ValueError):
    pass


class UnknownBackendError(JobbridgeError, LookupError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) or "none"
        super().__init__(f"unknown backend {name!r}; known backends: {listing}")


class ResourcesNotSupportedError(JobbridgeError):
    def __init__(self, backend: str, field: str, reason: str = "") -> None:
        self.backend = backend
        self.field = field
        detail = f": {reason}" if reason else ""
        super().__init__(f"backend {backend!r} cannot encode {field}{detail}")


class LimitExceededError(JobbridgeError):
    def __init__(self, backend: str, limit: str, requested: object, allowed: object) -> None:
        self.backend = backend
        self.limit = limit
        super().__init__(f"backend {backend!r}: {limit} is {allowed}, the job asks for {requested}")


class JobNotFoundError(JobbridgeError, LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class InvalidTransitionError(JobbridgeError):
    pass


class JobStateError(JobbridgeError):
    pass


class BackendError(JobbridgeError):
    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class SubmitOutcome(Enum):
    """What a submission that brought back no native id did on the backend."""

    REFUSED = "refused"
    """The scheduler said no for good (a bad option, an invalid account): trying again
    cannot help."""
    NOT_MADE = "not made"
    """Nothing reached the scheduler, or it said no for a passing reason (controller down,
    disk full): trying again later may help."""
    UNKNOWN = "unknown"
    """It may have created a native job: look for it before doing anything else."""


class SubmissionError(BackendError):
    def __init__(self, message: str, outcome: SubmitOutcome) -> None:
        super().__init__(message, retryable=outcome is not SubmitOutcome.REFUSED)
        self.outcome = outcome


def submit_outcome(error: BaseException) -> SubmitOutcome:
    """What a failed submission may have done, judged from how it failed."""
    if isinstance(error, SubmissionError):
        return error.outcome
    if isinstance(error, TransportError) and error.may_have_run:
        return SubmitOutcome.UNKNOWN
    if isinstance(error, JobbridgeError):
        return SubmitOutcome.NOT_MADE if error.retryable else SubmitOutcome.REFUSED
    if isinstance(error, OSError):  # a full disk, say, before anything was sent
        return SubmitOutcome.NOT_MADE
    return SubmitOutcome.UNKNOWN


class TransportError(JobbridgeError):
    def __init__(self, message: str, *, retryable: bool = True, may_have_run: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.may_have_run = may_have_run


class CommandFailed(TransportError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        said = stderr.strip() or stdout.strip() or "no output"
        super().__init__(f"{argv[0]} exited with status {returncode}: {said}", retryable=False)


class CommandTimeout(TransportError):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__(
            f"{argv[0]} did not finish within {timeout:g} s", retryable=True, may_have_run=True
        )


class ConnectionLost(TransportError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, may_have_run=True)
