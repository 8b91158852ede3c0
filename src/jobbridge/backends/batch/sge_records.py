"""Reading what Grid Engine's qstat -xml and qacct print: times, fields, failure codes, and
the exit-code files of its jobs' scripts. One record that cannot be read is left out, never
the answer as a whole."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from xml.etree import ElementTree

from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.records import UnreadableRecord
from jobbridge.transport.base import CommandResult

__all__ = [
    "WAITING",
    "accounted_state",
    "accounting_records",
    "accounting_word",
    "int_or_none",
    "job_ids",
    "job_list",
    "limit_word",
    "qacct_time",
    "queued_state",
    "record_fields",
    "said",
    "seconds",
    "state_word",
    "xml_time",
]

WAITING = "waiting for job"
"""How a job's state reason begins when it waits for others (``-hold_jid``)."""

_JOB_LIST = re.compile(r"<job_list\b[^>]*>.*?</job_list>", re.DOTALL)
_JOB_NUMBER = re.compile(r"<JB_job_number>\s*(\d+)\s*</JB_job_number>")


def job_list(output: str) -> Iterator[ElementTree.Element | UnreadableRecord]:
    """Each ``<job_list>`` of a ``qstat -xml`` answer; one that is no XML comes as an
    ``UnreadableRecord``. Raises ``ValueError`` if the answer as a whole is none."""
    if "<job_info" not in output:
        raise ValueError("no <job_info> in the answer")
    try:
        root = ElementTree.fromstring(output)  # noqa: S314 - Grid Engine's own answer
    except ElementTree.ParseError as error:
        # a whole answer (not one cut short) in which some job's element is broken
        chunks = _JOB_LIST.findall(output)
        if not output.rstrip().endswith("</job_info>") or (not chunks and "<job_list" in output):
            raise ValueError(f"not XML: {error}") from error
        for chunk in chunks:
            try:
                yield ElementTree.fromstring(chunk)  # noqa: S314
            except ElementTree.ParseError as bad:
                number = _JOB_NUMBER.search(chunk)
                yield UnreadableRecord(number[1] if number else chunk[:80], f"not XML: {bad}")
        return
    yield from root.iter("job_list")


def accounting_records(output: str) -> Iterator[dict[str, str]]:
    """The fields of each job record of ``qacct -j`` (the usage summary has none)."""
    for record in re.split(r"^=+\s*$", output, flags=re.MULTILINE):
        fields = record_fields(record)
        if "jobnumber" in fields:
            yield fields


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
    """The first word as a number; None if there is none. A word that is no number is an
    unreadable record."""
    if not words:
        return None
    if not words[0].lstrip("-").isdigit():
        raise ValueError(f"not a number: {words[0]!r}")
    return int(words[0])


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


def queued_state(entry: ElementTree.Element) -> tuple[list[str], NativeState]:
    """One ``<job_list>`` of ``qstat -xml -r``: the ids it stands for and their state."""
    number = (entry.findtext("JB_job_number") or "").strip()
    word = (entry.findtext("state") or "").strip()
    if not number.isdigit() or not word:
        raise UnreadableRecord(number or "?", "no job number or no state")
    try:
        ids = job_ids(number, entry.findtext("tasks"))
    except ValueError as error:
        raise UnreadableRecord(number, f"tasks: {error}") from error
    predecessors = [
        job.strip()
        for element in entry.findall("predecessor_jobs")
        for job in (element.text or "").split(",")
        if job.strip()
    ]
    state = NativeState(
        word=word,
        reason=f"{WAITING} {', '.join(predecessors)}" if predecessors else None,
        started=xml_time(entry.findtext("JAT_start_time")),
    )
    return ids, state


def accounted_state(fields: Mapping[str, str]) -> tuple[str, NativeState]:
    """One ``qacct -j`` record: its job (or task) id and how it ended."""
    number, task = fields["jobnumber"], fields.get("taskid", "undefined")
    key = number if task == "undefined" else f"{number}.{task}"
    try:
        if not number.isdigit() or not (task == "undefined" or task.isdigit()):
            raise ValueError("no job or task number")
        failed = int_or_none(fields.get("failed", "").split()[0:1])
        exit_status = int_or_none(fields.get("exit_status", "").split()[0:1])
    except ValueError as error:
        raise UnreadableRecord(key, str(error)) from error
    if failed is None:
        raise UnreadableRecord(key, "no failed field")
    word = accounting_word(failed, exit_status, fields)
    return key, NativeState(
        word=word,
        reason=None if failed == 0 else f"failed {fields['failed']}",
        exit_code=None if word == "FAILED" and failed == 30 else exit_status,
        started=qacct_time(fields.get("start_time", "")),
        ended=qacct_time(fields.get("end_time", "")),
    )
