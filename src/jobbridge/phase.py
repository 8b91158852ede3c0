"""The one state model: the UWS 1.1 execution phases, used by the library, store and service."""

from __future__ import annotations

from enum import StrEnum

from jobbridge.errors import InvalidTransitionError


class Phase(StrEnum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"
    UNKNOWN = "UNKNOWN"
    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_PHASES

    @property
    def is_active(self) -> bool:
        """Handed to jobbridge for running and not yet over."""
        return self in ACTIVE_PHASES

    def can_move_to(self, new: Phase) -> bool:
        return new in _NEXT[self]

    def check_move_to(self, new: Phase) -> None:
        if not self.can_move_to(new):
            raise InvalidTransitionError(f"a job cannot move from {self} to {new}")


FINAL_PHASES = frozenset({Phase.COMPLETED, Phase.ERROR, Phase.ABORTED, Phase.ARCHIVED})
ACTIVE_PHASES = frozenset(
    {Phase.QUEUED, Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED, Phase.UNKNOWN}
)

_ENDINGS = {Phase.COMPLETED, Phase.ERROR, Phase.ABORTED}
_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.QUEUED, Phase.HELD, Phase.ERROR, Phase.ABORTED}),
    Phase.QUEUED: frozenset(
        {Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED, Phase.UNKNOWN, *_ENDINGS}
    ),
    Phase.HELD: frozenset({Phase.QUEUED, Phase.EXECUTING, Phase.UNKNOWN, *_ENDINGS}),
    Phase.EXECUTING: frozenset({Phase.SUSPENDED, Phase.UNKNOWN, *_ENDINGS}),
    Phase.SUSPENDED: frozenset({Phase.EXECUTING, Phase.UNKNOWN, *_ENDINGS}),
    # UNKNOWN means jobbridge lost sight of the job; the next answer may say anything after
    # QUEUED, so the engine also checks the times it already recorded (see engine).
    Phase.UNKNOWN: frozenset(
        {Phase.QUEUED, Phase.EXECUTING, Phase.HELD, Phase.SUSPENDED, *_ENDINGS}
    ),
    Phase.COMPLETED: frozenset({Phase.ARCHIVED}),
    Phase.ERROR: frozenset({Phase.ARCHIVED}),
    Phase.ABORTED: frozenset({Phase.ARCHIVED}),
    Phase.ARCHIVED: frozenset(),
}
