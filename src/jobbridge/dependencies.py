"""Whether a job's dependencies let it run: now, later, never, or with the scheduler
enforcing the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from jobbridge.backends.base import NativeDependency
from jobbridge.job import Job
from jobbridge.phase import Phase

__all__ = ["Readiness", "Verdict", "judge", "met"]


class Readiness(Enum):
    READY = "ready"
    WAIT = "wait"
    NEVER = "never"


@dataclass(frozen=True)
class Verdict:
    readiness: Readiness
    native: tuple[NativeDependency, ...] = ()
    """Dependencies to hand to the scheduler along with the job."""


READY = Verdict(Readiness.READY)
WAIT = Verdict(Readiness.WAIT)
NEVER = Verdict(Readiness.NEVER)

_MET: dict[str, Callable[[Phase], bool]] = {
    "afterok": lambda phase: phase is Phase.COMPLETED,
    "afternotok": lambda phase: phase in (Phase.ERROR, Phase.ABORTED),
    "afterany": lambda phase: True,
}


def met(condition: str, parent_phase: Phase) -> bool:
    """Whether a parent that ended in ``parent_phase`` lets a ``condition`` dependent run."""
    return _MET[condition](parent_phase)


def judge(job: Job, parents: Sequence[Job], *, native_conditions: frozenset[str]) -> Verdict:
    """``parents`` in the order of ``job.spec.depends_on``. A parent still running on the
    job's own backend, under a condition that backend enforces, becomes a native dependency;
    for any other running parent the job waits."""
    native = []
    for dependency, parent in zip(job.spec.depends_on, parents, strict=True):
        enforced = dependency.condition in native_conditions
        if parent.phase.is_final:
            if not met(dependency.condition, parent.phase):
                return NEVER
        elif enforced and parent.backend == job.backend and parent.native_id:
            native.append(NativeDependency(parent.native_id, dependency.condition))
        else:
            return WAIT
    return Verdict(Readiness.READY, tuple(native))
