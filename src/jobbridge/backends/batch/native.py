"""What a scheduler's commands say of one job, and the readings shared by every scheduler."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["UNTOLD", "NativeState", "epoch_or_none", "from_epoch"]

UNTOLD = "NO_EXIT_STATUS"
"""The detail of an ended job whose scheduler does not say how it ended: its exit-code file
decides between COMPLETED and ERROR."""


@dataclass(frozen=True)
class NativeState:
    """One job as a scheduler command describes it."""

    word: str
    reason: str | None = None
    exit_code: int | None = None
    started: datetime | None = None
    ended: datetime | None = None


def from_epoch(text: str) -> datetime | None:
    """A time given as whole seconds since the epoch; None if ``text`` is no number."""
    try:
        return datetime.fromtimestamp(int(text), UTC)
    except ValueError:
        return None


def epoch_or_none(text: str) -> datetime | None:
    """A time from a scheduler told to print seconds since the epoch; None for 'Unknown'."""
    text = text.strip()
    return from_epoch(text) if text.isdigit() and int(text) > 0 else None
