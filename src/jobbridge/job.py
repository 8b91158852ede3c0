"""A job as jobbridge records it: the spec plus where it runs and how far it got."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from jobbridge.phase import Phase
from jobbridge.spec import JobSpec

__all__ = ["Event", "Handover", "Job", "JobStatus", "new_job_id", "new_jobs", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Handover(StrEnum):
    """Where handing a job to its backend stands. Only a SUBMITTED job has a native id."""

    WAITING = "WAITING"
    """Not handed over (yet): dependencies, limits, a retry after a passing failure."""
    CLAIMED = "CLAIMED"
    """A live process is submitting it; it keeps the claim's heartbeat fresh."""
    UNCERTAIN = "UNCERTAIN"
    """A submission may or may not have created a native job (no answer came back, or its
    process died): the backend is searched for it before anything else is done."""
    SUBMITTED = "SUBMITTED"


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    spec: JobSpec
    backend: str
    owner: str | None = None
    phase: Phase = Phase.PENDING
    detail: str | None = None
    message: str | None = None
    exit_code: int | None = None
    native_id: str | None = None
    array_id: str | None = None
    array_index: int | None = None
    created: datetime
    queued: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    destruction: datetime | None = None
    handover: Handover = Handover.WAITING
    attempts: int = 0
    """Submissions begun for this job."""
    missing_since: datetime | None = None
    """When its backend first failed to find the submitted job, in the current run of misses."""
    misses: int = 0
    """Status queries in a row that found the job nowhere."""
    cached_from: str | None = None
    """The earlier job whose outputs this one reused instead of running (the job cache)."""

    @model_validator(mode="before")
    @classmethod
    def _submitted_has_native_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("native_id") and "handover" not in data:
            return {**data, "handover": Handover.SUBMITTED}
        return data

    @property
    def name(self) -> str:
        return self.spec.display_name

    @property
    def is_submitted(self) -> bool:
        """Handed to the backend, which knows it by ``native_id``."""
        return self.native_id is not None


class JobStatus(BaseModel):
    """What a backend says about one job."""

    model_config = ConfigDict(frozen=True)

    phase: Phase
    detail: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started: datetime | None = None
    ended: datetime | None = None
    stop_native: bool = False
    """jobbridge itself ends the job while its native job may still run: cancel that first."""


class Event(BaseModel):
    """One recorded phase change: the audit trail of a job."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    time: datetime
    old_phase: Phase | None
    new_phase: Phase
    detail: str | None = None
    message: str | None = None


_ID_ALPHABET = "0123456789abcdefghijkmnpqrstvwxyz"  # no l, o, u: easier to read aloud


def new_job_id() -> str:
    """Twelve random characters (60 bits): unique in any realistic store, short to type."""
    number = secrets.randbelow(_ID_SPACE)  # one draw from the system's randomness, not twelve
    letters = []
    for _ in range(12):
        number, digit = divmod(number, len(_ID_ALPHABET))
        letters.append(_ID_ALPHABET[digit])
    return "".join(letters)


_ID_SPACE = len(_ID_ALPHABET) ** 12


def new_jobs(
    spec: JobSpec,
    backend: str,
    owner: str | None,
    phase: Phase,
    destruction: datetime | None = None,
    job_id: str | None = None,
) -> list[Job]:
    """The jobs a spec makes, created now: one (``job_id``, if given), or one per array
    index, each with its ``array_index`` and one ``array_id`` for all."""
    now = utcnow()
    common: dict[str, Any] = dict(
        spec=spec,
        backend=backend,
        owner=owner,
        phase=phase,
        created=now,
        queued=now if phase is Phase.QUEUED else None,
        destruction=destruction,
    )
    if spec.array is None:
        return [Job(id=job_id or new_job_id(), **common)]
    array_id = new_job_id()
    return [
        Job(id=new_job_id(), array_id=array_id, array_index=index, **common)
        for index in spec.array.indices
    ]
