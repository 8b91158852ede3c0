"""What the coordinator keeps of each work unit, pilot and work unit service while it runs
(the store has the same, written in batches)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobbridge.job import Job
from jobbridge.phase import Phase
from jobbridge.pilot.description import PilotJobDescription, WorkUnitDescription
from jobbridge.pilot.mailbox import Mailbox
from jobbridge.spec import Launcher

__all__ = [
    "BOUND",
    "RESCHEDULED",
    "SUBMITTED",
    "WAITING",
    "Listener",
    "PilotRecord",
    "ServiceState",
    "UnitRecord",
    "UnitServiceRecord",
    "unit_from_row",
]

SUBMITTED = "SUBMITTED"
"""Recorded by a process other than the coordinating one (a pilot pool's job), not yet
taken up."""
WAITING = "WAITING"
BOUND = "BOUND"
RESCHEDULED = "RESCHEDULED"

Listener = Callable[[str, str, object], object]
"""Called with (object id, member, new value); returning False removes it."""


class ServiceState:
    ACTIVE = "ACTIVE"
    CANCELED = "CANCELED"


@dataclass
class UnitRecord:
    id: str
    service_id: str
    seq: int
    description: WorkUnitDescription
    cores: int
    created: datetime
    phase: Phase = Phase.QUEUED
    detail: str | None = WAITING
    message: str | None = None
    exit_code: int | None = None
    pilot_id: str | None = None
    attempts: int = 0
    started: datetime | None = None
    ended: datetime | None = None
    retried: int = 0
    cancel_asked: bool = False
    output: dict[str, list[Any]] | None = None
    """Where the agent put its stdout and stderr: {"out": [file, start, end], "err": ...}."""
    listeners: dict[str, list[Listener]] = field(default_factory=dict)
    one_node: bool = field(init=False)
    """Runs on one node (no launcher spreads it)."""

    def __post_init__(self) -> None:
        self.one_node = self.description.chosen_launcher is Launcher.SINGLE

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phase": self.phase.value,
            "detail": self.detail,
            "message": self.message,
            "exit_code": self.exit_code,
            "pilot_id": self.pilot_id,
            "attempts": self.attempts,
            "retried": self.retried,
            "started": self.started,
            "ended": self.ended,
            "output": self.output,
        }


@dataclass
class PilotRecord:
    id: str
    service_id: str
    job_id: str
    rm: str
    backend: str
    description: PilotJobDescription
    nodes: int
    cores_per_node: int
    walltime: float | None
    created: datetime
    job: Job | None = None
    mailbox: Mailbox | None = None
    agent: dict[str, Any] | None = None
    heard: float = 0.0
    outstanding: dict[str, int] = field(default_factory=dict)
    outgoing: list[dict[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    drain: bool = False
    acks: list[str] = field(default_factory=list)
    """The agent's files to remove with the next exchange (their news is recorded)."""
    unrecorded: list[str] = field(default_factory=list)
    """The agent's files read, whose news may not be in the store yet."""
    last_exchange: float = 0.0
    ended_at: float | None = None
    done: bool = False
    finished: deque[tuple[float, int]] = field(default_factory=deque)
    """(when, how many) units the agent reported ended, over the last few seconds."""
    boost: int = 0
    """Extra units allowed while the pilot, given all it may have, still runs dry (a
    slow start: it doubles then, and shrinks while the pilot has units waiting)."""
    saturated: bool = False
    """At the last binding the pilot was given all it may have."""
    latency: float = 0.05
    """Seconds from a unit's end to the coordinator's hearing of it, at most."""
    listeners: dict[str, list[Listener]] = field(default_factory=dict)
    shown: tuple[Phase | None, str | None] = (None, None)

    @property
    def cores(self) -> int:
        return self.nodes * self.cores_per_node

    @property
    def draining(self) -> bool:
        return self.drain or bool(self.agent and self.agent.get("draining"))

    def remaining(self) -> float | None:
        """Seconds of walltime left, as the agent's clock counts them."""
        if self.walltime is None or not self.agent:
            return None
        ran = float(self.agent["time"]) - float(self.agent["started"])
        return self.walltime - ran - (time.monotonic() - self.heard)


@dataclass
class UnitServiceRecord:
    id: str
    state: str
    retries: int
    pool: str | None
    links: set[str] = field(default_factory=set)
    waiting: deque[str] = field(default_factory=deque)
    had_pilots: bool = False
    kept: bool = False
    """A pilot pool's service: its pilots are started again when they end, so its units
    wait for them rather than failing while there is none."""
    checked: tuple[int, int] | None = None
    """The largest (cores per node, cores) of its pilots when its waiting units were last
    found to fit; None: look again."""


def unit_from_row(row: dict[str, Any]) -> UnitRecord:
    return UnitRecord(
        id=row["id"],
        service_id=row["service_id"],
        seq=row["seq"],
        description=WorkUnitDescription.model_validate(row["description"]),
        cores=row["cores"],
        created=row["created"],
        phase=Phase(row["phase"]),
        detail=row["detail"],
        message=row["message"],
        exit_code=row["exit_code"],
        pilot_id=row["pilot_id"],
        attempts=row["attempts"],
        started=row["started"],
        ended=row["ended"],
        retried=row.get("retried") or 0,
        output=row.get("output"),
    )
