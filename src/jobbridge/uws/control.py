"""UWS control fields as clients send them (PHASE, RUNID, EXECUTIONDURATION, DESTRUCTION,
ACTION), read apart from job parameters and checked."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from jobbridge.uws.errors import UwsError

__all__ = [
    "MAX_INTEGER",
    "duration_of",
    "parse_timestamp",
    "run_at_creation",
    "run_id_of",
    "split_fields",
]

_RESERVED = {"phase", "runid", "executionduration", "destruction", "action"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_RUN_ID = 256
MAX_INTEGER = 2**31 - 1
"""The largest LAST, WAIT or EXECUTIONDURATION taken (about 68 years of seconds)."""


def split_fields(fields: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """UWS control fields (case-insensitive) apart from job parameters; the last value wins."""
    control: dict[str, str] = {}
    given: dict[str, str] = {}
    for key, value in fields:
        if key.lower() in _RESERVED:
            control[key.lower()] = value
        else:
            given[key] = value
    if control.get("action") is not None:
        raise UwsError("ACTION is not accepted here")
    return control, given


def run_at_creation(phase: str | None) -> bool:
    """Whether PHASE, as given with a new job's parameters, asks for it to run at once."""
    if phase is None:
        return False
    if phase.strip().upper() != "RUN":
        raise UwsError(f"PHASE={phase} cannot be given when creating a job; only PHASE=RUN")
    return True


def run_id_of(text: str) -> str:
    if len(text) > _MAX_RUN_ID:
        raise UwsError(f"RUNID is longer than {_MAX_RUN_ID} characters")
    if _CONTROL.search(text):
        raise UwsError("RUNID must not contain control characters")
    return text


def duration_of(text: str) -> int:
    try:
        seconds = int(text.strip())
    except ValueError:
        raise UwsError(f"EXECUTIONDURATION {text!r} is not a whole number of seconds") from None
    if not 0 <= seconds <= MAX_INTEGER:
        raise UwsError(f"EXECUTIONDURATION must be 0 (no limit) to {MAX_INTEGER} seconds")
    return seconds


def parse_timestamp(text: str, what: str = "DESTRUCTION") -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
        # IVOA times are UTC; clients such as pyvo send them without a zone
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise UwsError(f"{what} {text!r} is not an ISO 8601 time in years 1 to 9999") from None
