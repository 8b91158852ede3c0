"""Reading what Grid Engine's qstat -xml and qacct print: times, fields, failure codes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

from jobbridge.backends.batch.base import NativeState
from jobbridge.transport.base import CommandResult

__all__ = [
    "accounting_word",
    "int_or_none",
    "job_ids",
    "limit_word",
    "qacct_time",
    "record_fields",
    "said",
    "seconds",
    "state_word",
    "xml_time",
]


def xml_time(text: str | None) -> datetime | None:
    if not text or not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip()).replace(tzinfo=UTC)
    except ValueError:
        return None


def qacct_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text.strip(), "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    except ValueError:  # "-/-" for a job that never started
        return None


def record_fields(record: str) -> dict[str, str]:
    fields = {}
    for line in record.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            fields[key] = value.strip()
    return fields


def int_or_none(words: list[str]) -> int | None:
    return int(words[0]) if words and words[0].isdigit() else None


def accounting_word(failed: int, exit_status: int | None, fields: Mapping[str, str]) -> str:
    """The word for a qacct record's ``failed`` code (sge_status(5) lists them)."""
    if failed == 0:
        return "COMPLETED" if exit_status == 0 else "FAILED"
    if failed == 30:  # "application error": the script exited 100, its program failed
        return "FAILED"
    if failed == 37:
        return limit_word(fields.get("category", ""), fields.get("ru_wallclock", ""))
    if failed == 17:  # "through signal (possibly qdel)"
        return "CANCELLED"
    if failed == 100:  # "assumedly after job": killed by a signal; SIGKILL is what qdel sends
        return "CANCELLED" if exit_status == 137 else "KILLED"
    if failed in (18, 19):
        return "NODE_FAIL"
    if 12 <= failed <= 16:
        return "EPILOG_FAILED"
    if failed in (24, 25):
        return "RESCHEDULED"
    return "START_FAILED"


def limit_word(category: str, wallclock: str) -> str:
    """Failed 37 is one code for h_rt, h_cpu and h_vmem: the job's request tells which."""
    requests = dict(
        item.split("=", 1) for item in re.findall(r"\b[hs]_(?:rt|cpu|vmem)=[^ ,]+", category)
    )
    if not any(name in requests for name in ("h_rt", "s_rt", "h_cpu", "s_cpu")):
        return "OUT_OF_MEMORY" if "h_vmem" in requests else "TIMEOUT"
    if "h_vmem" not in requests:
        return "TIMEOUT"
    limit = seconds(requests.get("h_rt", ""))
    ran = seconds(wallclock.rstrip("s"))
    return "TIMEOUT" if limit is not None and ran is not None and ran >= limit else "OUT_OF_MEMORY"


def seconds(text: str) -> float | None:
    """Grid Engine's time: seconds, or ``h:m:s``."""
    try:
        total = 0.0
        for part in text.strip().split(":"):
            total = total * 60 + float(part)
        return total
    except ValueError:
        return None


def job_ids(number: str, tasks: str | None) -> list[str]:
    """``12`` and tasks ``3-9:2,12`` (how qstat shows pending tasks together) as
    ``12.3 12.5 12.7 12.9 12.12``; a job without tasks as ``12``."""
    if not tasks or not tasks.strip():
        return [number]
    ids = []
    for part in tasks.strip().split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        for task in range(int(first), int(last or first) + 1, int(step or 1)):
            ids.append(f"{number}.{task}")
    return ids


def state_word(queue: Mapping[str, NativeState], native_id: str) -> str | None:
    state = queue.get(native_id)
    return None if state is None else state.word


def said(result: CommandResult) -> str:
    return (result.stderr.strip() or result.stdout.strip())[:500]
