"""The state the parts of the pilot coordinator share, and its settings."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jobbridge import staging
from jobbridge.backends.base import Backend
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError
from jobbridge.phase import Phase
from jobbridge.pilot.description import (
    PilotJobDescription,
)
from jobbridge.pilot.mailbox import Mailbox, mailbox_for
from jobbridge.pilot.records import (
    Listener,
    PilotRecord,
    UnitRecord,
    UnitServiceRecord,
)
from jobbridge.pilot.resources import resolve_backend
from jobbridge.store.pilots import PilotStore
from jobbridge.transport.local import LocalTransport

__all__ = ["CoordinatorCore", "CoordinatorSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorSettings:
    tick: float = 0.01
    """Seconds between two rounds with local pilots (binding, mailbox, recording)."""
    remote_interval: float = 0.5
    """Seconds between two mailbox exchanges with a pilot reached over a remote transport."""
    refresh_interval: float = 0.5
    """Seconds between two engine refreshes when the engine does not run in the background."""
    lookahead: float = 0.1
    """A pilot is sent as many units beyond its free cores as it finishes in this long (and
    an exchange interval), so that it never waits for the next batch."""
    settle: float = 1.0
    """After its job ended, a pilot's last messages are awaited this long before its
    unfinished units are handed back."""
    agent_timeout: float = 120.0
    """A running pilot whose agent has been silent this long is cancelled."""
    default_retries: int = 3
    lease_duration: float | None = None
    """Seconds of the store's pilot lease (renewed every third of it); a coordinator that
    dies is taken over this long after its last renewal. None: the engine's lease_duration."""


class CoordinatorCore:
    """What every part of the coordinator shares: its engine and settings, what it knows of
    pilots, units and services (under ``_lock``), and the ways to a pilot's directory."""

    def __init__(self, engine: Engine, settings: CoordinatorSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or CoordinatorSettings()
        self.records = PilotStore(engine.store)
        self._token = secrets.token_hex(4)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._units: dict[str, UnitRecord] = {}
        self._pilots: dict[str, PilotRecord] = {}
        self._pilot_services: dict[str, str] = {}
        self._unit_services: dict[str, UnitServiceRecord] = {}
        self._dirty: dict[str, UnitRecord] = {}
        self._writing: set[str] = set()
        self._events: list[tuple[dict[str, list[Listener]], str, str, object]] = []
        self._sequence = time.time_ns()
        self._last_refresh = 0.0
        self._callbacks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def _unit(self, unit_id: str) -> UnitRecord:
        try:
            return self._units[unit_id]
        except KeyError:
            raise JobbridgeError(f"no work unit {unit_id!r}") from None

    def _pilot_state(self, pilot: PilotRecord) -> tuple[Phase, str | None]:
        job = pilot.job
        if job is None:
            return Phase.QUEUED, "SUBMITTING"
        if job.phase.is_final:
            return job.phase, job.detail or job.phase.value
        if pilot.agent is None:
            return job.phase, "STARTING" if job.phase is Phase.EXECUTING else job.detail
        return Phase.EXECUTING, "DRAINING" if pilot.draining else "ACTIVE"

    def _context_of(self, pilot_id: str) -> dict[str, Any] | None:
        row = self.records.pilot(pilot_id)
        return None if row is None else row["context"]

    def _mailbox(self, pilot: PilotRecord) -> Mailbox | None:
        if pilot.mailbox is None and pilot.job is not None and pilot.job.is_submitted:
            try:
                backend = self._backend_of(pilot)
                transport, root = backend.sandbox(pilot.job)
            except JobbridgeError as error:
                log.warning("pilot %s: no way to its sandbox: %s", pilot.id, error)
                return None
            pilot.mailbox = mailbox_for(transport, root)
            if isinstance(transport, LocalTransport):
                pilot.latency = 2 * self.settings.tick + 0.01
            else:
                pilot.latency = 1.5 * self.settings.remote_interval + self.settings.tick
        return pilot.mailbox

    def _backend_of(self, pilot: PilotRecord) -> Backend:
        if pilot.backend in self.engine.backends:
            return self.engine.backend(pilot.backend)
        return resolve_backend(self.engine, pilot.rm, self._context_of(pilot.id))

    def _is_local(self, pilot: PilotRecord) -> bool:
        mailbox = pilot.mailbox
        return mailbox is not None and isinstance(mailbox.transport, LocalTransport)

    def _stage_in(self, unit: UnitRecord, pilot: PilotRecord) -> None:
        transfers = unit.description.transfers("in")
        if not transfers:
            return
        mailbox = self._mailbox(pilot)
        if mailbox is None:
            raise JobbridgeError("the pilot's directory cannot be reached")
        staging.stage_in(mailbox.transport, mailbox.root, transfers)

    def _stage_out(self, unit: UnitRecord) -> str | None:
        transfers = unit.description.transfers("out")
        pilot = self._pilots.get(unit.pilot_id or "")
        if not transfers or pilot is None:
            return None
        mailbox = self._mailbox(pilot)
        if mailbox is None:
            return "stage-out failed: the pilot's directory cannot be reached"
        try:
            staging.stage_out(mailbox.transport, mailbox.root, transfers, os.getcwd())
        except (JobbridgeError, OSError) as error:
            return f"stage-out failed: {error}"
        return None

    def _pilot_from_row(self, row: dict[str, Any]) -> PilotRecord:
        return PilotRecord(
            id=row["id"],
            service_id=row["service_id"],
            job_id=row["job_id"],
            rm=row["rm"],
            backend=row["backend"],
            description=PilotJobDescription.model_validate(row["description"]),
            nodes=row["nodes"],
            cores_per_node=row["cores_per_node"],
            walltime=row["walltime"],
            created=row["created"],
        )
