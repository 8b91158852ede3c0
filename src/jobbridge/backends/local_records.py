"""What the local runners wrote of the jobs they claimed, as the backend reads it back (the
format is ``local_runner``'s): each record read once for the jobs it shares."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobbridge.backends import local_runner
from jobbridge.job import JobStatus
from jobbridge.phase import Phase

__all__ = ["RunnerRecord", "RunnerRecords", "ended_status", "from_epoch"]


@dataclass
class RunnerRecord:
    """What a runner wrote of the jobs it claimed (see ``local_runner``)."""

    pid: int
    ticks: int
    started: dict[str, float]
    ended: dict[str, dict[str, Any]]
    alive: bool

    @classmethod
    def parse(cls, text: bytes) -> RunnerRecord:
        head, *lines = text.split(b"\n")[:-1]  # a line not yet whole does not count
        pid, ticks = (int(word) for word in head.split())
        started: dict[str, float] = {}
        ended: dict[str, dict[str, Any]] = {}
        for line in lines:
            with contextlib.suppress(ValueError):  # e.g. one cut short by a full disk
                job_id, event, value = line.decode(errors="replace").split(" ", 2)
                if event == local_runner.STARTED:
                    started[job_id] = float(value)
                elif event == local_runner.ENDED:
                    ended[job_id] = json.loads(value)
        return cls(pid, ticks, started, ended, local_runner.same_process(pid, ticks))


class RunnerRecords:
    """Runner records read once for the jobs they share, and again only once they grew."""

    def __init__(self) -> None:
        self._read: dict[tuple[int, int], tuple[int, RunnerRecord]] = {}

    def read(self, job_dir: str, *, again: bool = False) -> RunnerRecord | None:
        path = os.path.join(job_dir, local_runner.RUNNER_FILE)
        try:
            # a job's link to its record is made once and never replaced: a look at its size
            # (a quarter of the cost of opening it) tells whether it is known as it is
            stat = os.stat(path)
            key = (stat.st_dev, stat.st_ino)
            known = self._read.get(key)
            if known is not None and known[0] == stat.st_size and not again:
                return known[1]
            with open(path, "rb") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        if b"\n" not in text:  # just created: its first line is on its way
            return None
        try:
            record = RunnerRecord.parse(text)
        except ValueError:  # not a runner's: it names no live runner and no outcome
            record = RunnerRecord(0, 0, {}, {}, alive=False)
        self._read[key] = (len(text), record)
        return record


def ended_status(outcome: dict[str, Any]) -> JobStatus:
    """The status a runner's outcome line tells."""
    detail = outcome.get("detail") or None
    code = outcome.get("exit_code")
    if detail == "CANCELLED":
        phase = Phase.ABORTED
    elif code == 0 and detail is None:
        phase = Phase.COMPLETED
    else:
        phase = Phase.ERROR
    return JobStatus(
        phase=phase,
        detail=detail,
        message=outcome.get("message") or None,
        exit_code=code,
        started=from_epoch(float(outcome["started"])),
        ended=from_epoch(float(outcome["ended"])),
    )


def from_epoch(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
