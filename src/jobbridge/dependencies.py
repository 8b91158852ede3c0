"""Whether a job's dependencies let it run: now, later, never, or with the scheduler
enforcing the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from jobbridge.backends.base import NativeDependency
from jobbridge.job import Job
from jobbridge.phase import Phase

__all__ = ["Readiness", "Verdict", "judge"]


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


def judge(job: Job, parents: Sequence[Job], *, scheduler_enforces: bool) -> Verdict:
    """``parents`` in the order of ``job.spec.depends_on``. With ``scheduler_enforces``, a
    parent still running on the job's own backend becomes a native dependency."""
    native = []
    for dependency, parent in zip(job.spec.depends_on, parents, strict=True):
        if parent.phase.is_final:
            if not _MET[dependency.condition](parent.phase):
                return NEVER
        elif scheduler_enforces and parent.backend == job.backend and parent.native_id:
            native.append(NativeDependency(parent.native_id, dependency.condition))
        else:
            return WAIT
    return Verdict(Readiness.READY, tuple(native))
