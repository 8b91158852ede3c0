"""Push from batch job scripts (see ``jobbridge.push``): what the template is given, and how
a push is weighed against the files the job's own script wrote.

The script pushes ``started`` just before the program runs, in the background, and
``ended`` once its exit-code file is written, in the foreground (a scheduler kills what a
finished job script left running) with a short timeout; with curl, else python3, else not
at all. The token travels on standard input, never on a command line.
"""

from __future__ import annotations

from jobbridge.job import JobStatus
from jobbridge.phase import Phase
from jobbridge.push import PushAddress, PushEvent

__all__ = ["KILLED", "push_values", "weigh"]

KILLED = 128
"""Exit codes from here on are a signal's: the scheduler's word on why (TIMEOUT,
OUT_OF_MEMORY, a cancel) comes first, so polling decides."""


def push_values(push: PushAddress | None, script_job_id: str) -> dict[str, str] | None:
    """The ``push`` values of the job script template, or None for a script that does not
    push. ``script_job_id`` is the id the script knows: the array's, for its members."""
    if push is None:
        return None
    return {"url": push.url_for(script_job_id), "token": push.token(script_job_id)}


def weigh(
    event: PushEvent, exit_file: JobStatus | None, started_record: bytes | None
) -> JobStatus | None:
    """What the script's own records say after a push: the ending its exit-code file
    records, or for ``started`` that the script wrote the native id it runs under; None
    when they say nothing (yet) or when the scheduler must speak first."""
    if exit_file is not None:
        if exit_file.exit_code is not None and exit_file.exit_code >= KILLED:
            return None
        return exit_file
    if event is PushEvent.STARTED and started_record and started_record.strip():
        return JobStatus(phase=Phase.EXECUTING)
    return None
