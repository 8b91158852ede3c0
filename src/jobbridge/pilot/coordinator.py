"""The pilot coordinator: binds work units late to whichever pilot has room, talks to the
agents through their mailboxes, records unit states in the store in batches, and hands the
units of a pilot that ended back to the others.

It sits on the engine as the UWS service does: a pilot is an ordinary job (``Engine.create``
and ``start``, ``get``, ``cancel``), its sandbox is reached through ``backend.sandbox(job)``.
A unit is recorded before it is bound, and bound (in the store) before it is sent, so a new
coordinator on the same store carries on with every unit: units sent but not seen running are
sent again, and the agent ignores what it has seen. One coordinator drives a store's pilots
at a time.

Unit states are the engine's phases: QUEUED (waiting in the coordinator, or bound to a pilot:
``detail`` says which), EXECUTING, COMPLETED, ERROR, ABORTED. A unit whose pilot ended while
it ran starts again, QUEUED with detail RESCHEDULED, at most ``retries`` times; that is the
one move back a unit makes, and it counts as a new attempt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobbridge import staging
from jobbridge.backends.base import Backend
from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobStateError, SpecError
from jobbridge.job import Job, new_job_id, utcnow
from jobbridge.phase import Phase
from jobbridge.pilot import agent as agent_module
from jobbridge.pilot.description import (
    PilotJobDescription,
    WorkUnitDescription,
)
from jobbridge.pilot.launch import pilot_spec, walltime_seconds
from jobbridge.pilot.mailbox import Mailbox, batch_name, mailbox_for
from jobbridge.pilot.records import (
    BOUND,
    RESCHEDULED,
    WAITING,
    Listener,
    PilotRecord,
    ServiceState,
    UnitRecord,
    UnitServiceRecord,
    unit_from_row,
)
from jobbridge.pilot.resources import resolve_backend
from jobbridge.store.pilots import PilotStore, pilots
from jobbridge.transport.local import LocalTransport

__all__ = ["Coordinator", "CoordinatorSettings"]

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


class Coordinator:
    """Binds work units to pilots, over one engine. ``close`` stops it; pilots run on."""

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
        self._recover()
        self._caller = threading.Thread(
            target=self._run_callbacks, name="jobbridge-pilot-callbacks", daemon=True
        )
        self._caller.start()
        self._loop = threading.Thread(target=self._run, name="jobbridge-pilots", daemon=True)
        self._loop.start()

    # -- pilot job services and pilots -------------------------------------------------------

    def new_pilot_service(self) -> str:
        service_id = new_job_id()
        self.records.add_pilot_service(service_id, ServiceState.ACTIVE, utcnow())
        with self._lock:
            self._pilot_services[service_id] = ServiceState.ACTIVE
        return service_id

    def open_pilot_service(self, service_id: str) -> str:
        with self._lock:
            if service_id in self._pilot_services:
                return self._pilot_services[service_id]
        row = self.records.pilot_service(service_id)
        if row is None:
            raise JobbridgeError(f"no pilot job service {service_id!r}")
        with self._lock:
            self._pilot_services[service_id] = row["state"]
        return str(row["state"])

    def pilot_ids(self, service_id: str) -> list[str]:
        return [row["id"] for row in self.records.pilots(service_ids=[service_id])]

    def create_pilot(
        self,
        service_id: str,
        rm: str,
        description: PilotJobDescription,
        context: dict[str, Any] | None = None,
    ) -> str:
        if self.open_pilot_service(service_id) != ServiceState.ACTIVE:
            raise JobStateError(f"pilot job service {service_id} is cancelled")
        description.check_own()
        backend = resolve_backend(self.engine, rm, context)
        pilot_id = new_job_id()
        spec = pilot_spec(pilot_id, backend, description, self.settings.remote_interval / 2)
        job_id = new_job_id()
        row = {
            "id": pilot_id,
            "service_id": service_id,
            "job_id": job_id,
            "rm": rm,
            "backend": backend.name,
            "description": description.model_dump(mode="json"),
            "context": context,
            "nodes": description.nodes,
            "cores_per_node": description.cores_per_node,
            "walltime": walltime_seconds(description),
            "created": utcnow(),
            "done": False,
        }

        def also(conn: Any) -> None:
            conn.execute(pilots.insert().values(**row))

        self.engine.create(spec, backend=backend.name, job_id=job_id, also=also)
        pilot = self._pilot_from_row(row)
        with self._lock:
            self._pilots[pilot_id] = pilot
            for service in self._unit_services.values():
                if service_id in service.links:
                    service.had_pilots = True
        self.engine.start(job_id)
        self._wake.set()
        return pilot_id

    def cancel_pilot(self, pilot_id: str) -> None:
        pilot = self._pilot(pilot_id)
        with contextlib.suppress(JobStateError):
            self.engine.cancel(pilot.job_id)
        self._wake.set()

    def cancel_pilot_service(self, service_id: str) -> None:
        self.open_pilot_service(service_id)
        self.records.set_pilot_service_state(service_id, ServiceState.CANCELED)
        with self._lock:
            self._pilot_services[service_id] = ServiceState.CANCELED
            ids = [p.id for p in self._pilots.values() if p.service_id == service_id]
        for pilot_id in ids:
            self.cancel_pilot(pilot_id)

    def reinitialize_pilot(self, pilot_id: str, description: PilotJobDescription) -> str:
        """A new pilot job with the new description under the same pilot service; the old
        one drains (finishes what it runs, hands the rest back) and ends."""
        old = self._pilot(pilot_id)
        new_id = self.create_pilot(old.service_id, old.rm, description, self._context_of(pilot_id))
        with self._lock:
            old.drain = True
            old.outgoing.clear()
        self._wake.set()
        return new_id

    def _context_of(self, pilot_id: str) -> dict[str, Any] | None:
        row = self.records.pilot(pilot_id)
        return None if row is None else row["context"]

    def pilot_view(self, pilot_id: str) -> dict[str, Any]:
        pilot = self._pilot(pilot_id)
        with self._lock:
            phase, detail = self._pilot_state(pilot)
            return {
                "state": phase,
                "state_detail": detail,
                "job_id": pilot.job_id,
                "rm": pilot.rm,
                "backend": pilot.backend,
                "description": pilot.description,
                "agent": dict(pilot.agent or {}),
                "cores": pilot.cores,
                "service_id": pilot.service_id,
                "units": len(pilot.outstanding),
            }

    def _pilot(self, pilot_id: str) -> PilotRecord:
        with self._lock:
            pilot = self._pilots.get(pilot_id)
        if pilot is None:
            row = self.records.pilot(pilot_id)
            if row is None:
                raise JobbridgeError(f"no pilot {pilot_id!r}")
            pilot = self._pilot_from_row(row)
            pilot.done = bool(row["done"])
            with contextlib.suppress(JobbridgeError):
                pilot.job = self.engine.get(pilot.job_id)
            with self._lock:
                pilot = self._pilots.setdefault(pilot_id, pilot)
        return pilot

    def _pilot_state(self, pilot: PilotRecord) -> tuple[Phase, str | None]:
        job = pilot.job
        if job is None:
            return Phase.QUEUED, "SUBMITTING"
        if job.phase.is_final:
            return job.phase, job.detail or job.phase.value
        if pilot.agent is None:
            return job.phase, "STARTING" if job.phase is Phase.EXECUTING else job.detail
        return Phase.EXECUTING, "DRAINING" if pilot.draining else "ACTIVE"

    # -- work unit services --------------------------------------------------------------------

    def new_unit_service(self, retries: int | None = None, pool: str | None = None) -> str:
        service_id = new_job_id()
        retries = self.settings.default_retries if retries is None else retries
        self.records.add_unit_service(service_id, ServiceState.ACTIVE, retries, utcnow(), pool)
        with self._lock:
            self._unit_services[service_id] = UnitServiceRecord(
                service_id, ServiceState.ACTIVE, retries, pool
            )
        return service_id

    def open_unit_service(self, service_id: str) -> None:
        """Know the service and all its units (a reconnection)."""
        with self._lock:
            known = service_id in self._unit_services
        if not known:
            row = self.records.unit_service(service_id)
            if row is None:
                raise JobbridgeError(f"no work unit service {service_id!r}")
            service = UnitServiceRecord(service_id, row["state"], row["retries"], row["pool"])
            service.links = set(self.records.links(service_id))
            with self._lock:
                self._unit_services.setdefault(service_id, service)
        rows = self.records.units(service_id=service_id)
        with self._lock:
            for row in rows:
                if row["id"] not in self._units:
                    self._units[row["id"]] = unit_from_row(row)

    def unit_service_state(self, service_id: str) -> str:
        with self._lock:
            return self._unit_services[service_id].state

    def unit_ids(self, service_id: str) -> list[str]:
        with self._lock:
            units = [u for u in self._units.values() if u.service_id == service_id]
        return [unit.id for unit in sorted(units, key=lambda unit: unit.seq)]

    def link(self, service_id: str, pilot_service_id: str) -> None:
        self.open_pilot_service(pilot_service_id)
        self.records.link(service_id, pilot_service_id)
        with self._lock:
            service = self._unit_services[service_id]
            service.links.add(pilot_service_id)
            if any(p.service_id == pilot_service_id for p in self._pilots.values()):
                service.had_pilots = True
        self._wake.set()

    def unlink(self, service_id: str, pilot_service_id: str) -> None:
        self.records.unlink(service_id, pilot_service_id)
        with self._lock:
            self._unit_services[service_id].links.discard(pilot_service_id)
        self._wake.set()

    def linked(self, service_id: str) -> list[str]:
        with self._lock:
            return sorted(self._unit_services[service_id].links)

    def submit(self, service_id: str, descriptions: Sequence[WorkUnitDescription]) -> list[str]:
        """Record the units (in one transaction), then let them wait for a pilot. A unit
        that no live or pending pilot can ever fit ends ERROR at once, saying why."""
        with self._lock:
            service = self._unit_services[service_id]
            if service.state != ServiceState.ACTIVE:
                raise JobStateError(f"work unit service {service_id} is cancelled")
        copies: dict[int, WorkUnitDescription] = {}
        checked = []
        for description in descriptions:
            copy = copies.get(id(description))
            if copy is None:  # the same description for many units is copied once
                copy = copies[id(description)] = description.model_copy(deep=True)
                copy.check_own()
            checked.append(copy)
        first = self.records.next_seq(service_id)
        now = utcnow()
        units = [
            UnitRecord(
                id=secrets.token_hex(8),
                service_id=service_id,
                seq=first + number,
                description=description,
                cores=description.cores,
                created=now,
            )
            for number, description in enumerate(checked)
        ]
        self.records.add_units(
            [
                {
                    **unit.row(),
                    "service_id": service_id,
                    "seq": unit.seq,
                    "description": unit.description.model_dump(mode="json"),
                    "cores": unit.cores,
                    "created": unit.created,
                }
                for unit in units
            ]
        )
        with self._lock:
            for unit in units:
                self._units[unit.id] = unit
                service.waiting.append(unit.id)
            service.checked = None
            self._fail_hopeless(service)
        self._flush()
        self._wake.set()
        return [unit.id for unit in units]

    def cancel_unit(self, unit_id: str) -> None:
        with self._lock:
            unit = self._unit(unit_id)
            if unit.phase.is_final:
                return
            unit.cancel_asked = True
            pilot = self._pilots.get(unit.pilot_id or "")
            if pilot is None:
                self._end(unit, Phase.ABORTED, "CANCELLED", "cancelled")
            else:
                pilot.cancels.append(unit.id)
        self._flush()
        self._wake.set()

    def cancel_unit_service(self, service_id: str) -> None:
        self.records.set_unit_service_state(service_id, ServiceState.CANCELED)
        with self._lock:
            self._unit_services[service_id].state = ServiceState.CANCELED
            ids = [u.id for u in self._units.values() if u.service_id == service_id]
        for unit_id in ids:
            self.cancel_unit(unit_id)

    def unit_view(self, unit_id: str) -> UnitRecord:
        with self._lock:
            return self._unit(unit_id)

    def _unit(self, unit_id: str) -> UnitRecord:
        try:
            return self._units[unit_id]
        except KeyError:
            raise JobbridgeError(f"no work unit {unit_id!r}") from None

    def read_unit_output(self, unit_id: str, stream: str) -> bytes:
        with self._lock:
            unit = self._unit(unit_id)
            pilot = self._pilots.get(unit.pilot_id or "")
        if pilot is None or pilot.job is None:
            return b""
        mailbox = self._mailbox(pilot)
        if mailbox is None:
            return b""
        chosen = unit.description.output if stream == "stdout" else unit.description.error
        if chosen is None:
            suffix = "out" if stream == "stdout" else "err"
            return mailbox.read(f"{agent_module.UNITS_DIR}/{unit.id}.{suffix}")
        where = unit.description.working_directory or pilot.description.working_directory or ""
        return mailbox.read(os.path.join(where, chosen))

    def wait_units(self, unit_ids: Sequence[str], timeout: float | None = None) -> bool:
        """Block until every unit has ended (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if all(self._recorded_final(uid) for uid in unit_ids):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.5 if left is None else min(left, 0.5))

    def _recorded_final(self, unit_id: str) -> bool:
        """Ended, and the ending is in the store (lock held)."""
        unit = self._unit(unit_id)
        return unit.phase.is_final and unit_id not in self._dirty and unit_id not in self._writing

    def wait_pilot_active(self, pilot_id: str, timeout: float | None = None) -> bool:
        pilot = self._pilot(pilot_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while pilot.agent is None and not pilot.done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.5 if left is None else min(left, 0.5))
            return pilot.agent is not None and not pilot.done

    def listen_unit(self, unit_id: str, member: str, listener: Listener | None) -> None:
        with self._lock:
            _listen(self._unit(unit_id).listeners, member, listener)

    def listen_pilot(self, pilot_id: str, member: str, listener: Listener | None) -> None:
        pilot = self._pilot(pilot_id)
        with self._lock:
            _listen(pilot.listeners, member, listener)

    # -- the loop ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop coordinating; pilots and their agents run on (a new coordinator resumes)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._loop.join()
        self._flush()
        self._callbacks.put(None)
        self._caller.join()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._round()
            except Exception:
                log.exception("pilot coordination round failed")
            self._wake.wait(self.settings.tick)
            self._wake.clear()

    def _round(self) -> None:
        now = time.monotonic()
        if not self.engine.running and now - self._last_refresh >= self.settings.refresh_interval:
            self._last_refresh = now
            try:
                self.engine.refresh()
            except Exception:
                log.exception("engine refresh failed")
        with self._lock:
            active = [pilot for pilot in self._pilots.values() if not pilot.done]
        if not active:
            with self._lock:
                for service in self._unit_services.values():
                    self._fail_hopeless(service)
            self._flush()
            return
        jobs = self.engine.store.get_many(pilot.job_id for pilot in active)
        with self._lock:
            for pilot, job in zip(active, jobs, strict=True):
                pilot.job = job
                if job.phase.is_final and pilot.ended_at is None:
                    pilot.ended_at = now
            self._bind()
        self._flush()
        for pilot in active:
            self._exchange(pilot, now)
        with self._lock:
            for pilot in active:
                self._watch(pilot, now)
            for service in self._unit_services.values():
                self._fail_hopeless(service)
            self._bind()
        self._flush()

    def _exchange(self, pilot: PilotRecord, now: float) -> None:
        job = pilot.job
        if job is None or not job.is_submitted or pilot.done:
            return
        mailbox = self._mailbox(pilot)
        if mailbox is None:
            return
        if not self._is_local(pilot) and now - pilot.last_exchange < self.settings.remote_interval:
            return
        pilot.last_exchange = now
        with self._lock:
            message: dict[str, Any] = {}
            if pilot.outgoing:
                message["units"] = pilot.outgoing
            if pilot.cancels:
                message["cancel"] = pilot.cancels
            if pilot.drain:
                message["drain"] = True
            sent_units, sent_cancels = pilot.outgoing, pilot.cancels
            pilot.outgoing, pilot.cancels = [], []
        name = batch = None
        if message and not job.phase.is_final:
            self._sequence += 1
            name = batch_name(self._sequence, self._token)
            batch = json.dumps(message, separators=(",", ":")).encode()
        try:
            files = mailbox.exchange(name, batch, pilot.acks)
        except (JobbridgeError, OSError) as error:
            log.warning("pilot %s: mailbox exchange failed: %s", pilot.id, error)
            with self._lock:
                pilot.outgoing = sent_units + pilot.outgoing
                pilot.cancels = sent_cancels + pilot.cancels
            return
        pilot.acks = []
        if not files:
            return
        with self._lock:
            self._apply(pilot, files)
        self._flush()
        names = [found for found, _ in files]
        if mailbox.acks_now:
            mailbox.remove(names)
        else:
            pilot.acks = names

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

    # -- what agents say -----------------------------------------------------------------------

    def _apply(self, pilot: PilotRecord, files: Iterable[tuple[str, bytes]]) -> None:
        finished = 0
        for name, content in files:
            try:
                message = json.loads(content)
            except ValueError:
                log.warning("pilot %s: unreadable message %s", pilot.id, name)
                continue
            status = message.get("agent")
            if isinstance(status, dict):
                if pilot.agent is None:
                    log.info("pilot %s: agent up on %s", pilot.id, status.get("hosts"))
                pilot.agent = status
                pilot.heard = time.monotonic()
                self._pace(pilot, status)
            for update in message.get("updates", ()):
                try:
                    finished += self._apply_update(pilot, update)
                except (TypeError, ValueError) as error:
                    log.warning("pilot %s: unreadable update %r: %s", pilot.id, update, error)
        if finished:
            pilot.finished.append((time.monotonic(), finished))

    def _apply_update(self, pilot: PilotRecord, update: list[Any]) -> int:
        unit_id, attempt, word, code, when, said = update
        unit = self._units.get(str(unit_id))
        if unit is None or unit.pilot_id != pilot.id or unit.attempts != attempt:
            return 0
        if unit.phase.is_final:
            return 0
        moment = datetime.fromtimestamp(float(when), UTC)
        if word == agent_module.RUNNING:
            if unit.phase is Phase.QUEUED:
                unit.started = moment
                self._set(unit, Phase.EXECUTING, "RUNNING", None)
            return 0
        pilot.outstanding.pop(unit.id, None)
        if word == agent_module.RETURNED:
            self._hand_back(unit, f"pilot {pilot.id} handed it back: {said}")
            return 0
        unit.exit_code = code
        unit.started = unit.started or moment
        if word == agent_module.EXITED and code == 0:
            self._end(unit, Phase.COMPLETED, None, None, moment)
        elif word == agent_module.EXITED:
            self._end(unit, Phase.ERROR, "FAILED", said or f"exit code {code}", moment)
        elif word == agent_module.CANCELLED:
            self._end(unit, Phase.ABORTED, "CANCELLED", said or "cancelled", moment)
        else:  # EXEC_FAILED, TIMEOUT
            self._end(unit, Phase.ERROR, str(word), said or None, moment)
        return 1

    def _watch(self, pilot: PilotRecord, now: float) -> None:
        """A pilot whose job ended hands its units back once its last words are in; a pilot
        whose agent went silent is cancelled."""
        job = pilot.job
        if job is None:
            return
        if job.phase.is_final:
            settled = pilot.ended_at is not None and now - pilot.ended_at >= self.settings.settle
            if settled or pilot.mailbox is None:
                self._pilot_ended(pilot, job)
            return
        if (
            pilot.agent is not None
            and now - pilot.heard > self.settings.agent_timeout
            and job.phase is Phase.EXECUTING
        ):
            log.warning("pilot %s: its agent is silent; cancelling it", pilot.id)
            with contextlib.suppress(JobbridgeError):
                self.engine.cancel(job.id)

    def _pilot_ended(self, pilot: PilotRecord, job: Job) -> None:
        pilot.done = True
        how = f"{job.phase}" + (f" ({job.detail})" if job.detail else "")
        for unit in [u for u in self._units.values() if u.pilot_id == pilot.id]:
            if not unit.phase.is_final:
                self._hand_back(unit, f"pilot {pilot.id} ended {how}")
        pilot.outstanding.clear()
        try:
            self.records.update_pilot(pilot.id, done=True)
        except Exception:
            log.exception("pilot %s: could not record its end", pilot.id)
        if pilot.description.cleanup and job.is_submitted:
            with contextlib.suppress(Exception):
                self.engine.free(job.id)
        self._changed.notify_all()

    def _hand_back(self, unit: UnitRecord, why: str) -> None:
        """A unit its pilot did not finish: bound again, or failed when it has started too
        often already."""
        pilot = self._pilots.get(unit.pilot_id or "")
        if pilot is not None:
            pilot.outstanding.pop(unit.id, None)
        if unit.cancel_asked:
            self._end(unit, Phase.ABORTED, "CANCELLED", "cancelled")
            return
        ran = unit.phase is Phase.EXECUTING
        service = self._unit_services.get(unit.service_id)
        retries = unit.description.retries
        if retries is None:
            retries = service.retries if service else self.settings.default_retries
        if ran and unit.retried >= retries:
            self._end(
                unit, Phase.ERROR, "PILOT_LOST",
                f"{why} while it ran; it was rescheduled {unit.retried} times already"
                f" (retries: {retries})",
            )  # fmt: skip
            return
        if ran:
            unit.retried += 1
        unit.pilot_id = None
        unit.started = None
        unit.message = why
        self._set(unit, Phase.QUEUED, RESCHEDULED if ran else WAITING, why, backwards=True)
        if service is not None:
            service.waiting.appendleft(unit.id)
            service.checked = None

    # -- binding -----------------------------------------------------------------------------

    def _bind(self) -> None:
        """Give waiting units to pilots with room, oldest first; a unit that does not fit
        waits while smaller ones behind it go."""
        for service in self._unit_services.values():
            if not service.waiting:
                continue
            room = {
                pilot.id: self._room(pilot)
                for pilot in self._pilots.values()
                if pilot.service_id in service.links and self._takes_units(pilot)
            }
            if not room or max(room.values()) < 1:
                continue
            keep: deque[str] = deque()
            scanned = 0
            while service.waiting and max(room.values()) >= 1 and scanned < 5000:
                unit = self._units[service.waiting.popleft()]
                scanned += 1
                if unit.phase is not Phase.QUEUED or unit.pilot_id is not None:
                    continue
                target = self._choose(unit, room)
                if target is None:
                    keep.append(unit.id)
                    continue
                room[target.id] -= unit.cores
                self._send(unit, target)
            keep.extend(service.waiting)
            service.waiting = keep
            for pilot_id, left in room.items():
                self._pilots[pilot_id].saturated = left < 1

    def _takes_units(self, pilot: PilotRecord) -> bool:
        job = pilot.job
        return (
            not pilot.done
            and pilot.agent is not None
            and not pilot.draining
            and job is not None
            and not job.phase.is_final
        )

    def _pace(self, pilot: PilotRecord, status: dict[str, Any]) -> None:
        dry = not status.get("pending") and int(status.get("running", 0)) < pilot.cores
        if dry and pilot.saturated:
            pilot.boost = min(max(pilot.cores, 2 * pilot.boost), _MAX_AHEAD(pilot))
        elif status.get("pending"):
            pilot.boost = pilot.boost * 3 // 4

    def _room(self, pilot: PilotRecord) -> int:
        """Cores a pilot may still be given: its own, plus what it would finish before the
        coordinator hears of it and sends more (so that it never runs dry)."""
        now = time.monotonic()
        while pilot.finished and now - pilot.finished[0][0] > _RATE_WINDOW:
            pilot.finished.popleft()
        span = max(now - pilot.finished[0][0], 0.25) if pilot.finished else _RATE_WINDOW
        rate = sum(count for _, count in pilot.finished) / span
        ahead = math.ceil(2 * rate * (pilot.latency + self.settings.lookahead))
        ahead = min(max(ahead, pilot.cores, pilot.boost), _MAX_AHEAD(pilot))
        return pilot.cores + ahead - sum(pilot.outstanding.values())

    def _choose(self, unit: UnitRecord, room: dict[str, int]) -> PilotRecord | None:
        best = None
        for pilot_id, free in room.items():
            pilot = self._pilots[pilot_id]
            if free < unit.cores or not _fits(unit, pilot):
                continue
            limit = unit.description.wall_time_limit
            left = pilot.remaining()
            margin = pilot.description.drain_margin
            if limit is not None and left is not None and limit.total_seconds() > left - margin:
                continue
            if best is None or free > room[best.id]:
                best = pilot
        return best

    def _send(self, unit: UnitRecord, pilot: PilotRecord) -> None:
        try:
            self._stage_in(unit, pilot)
        except (JobbridgeError, OSError) as error:
            self._end(unit, Phase.ERROR, "STAGE_IN_FAILED", f"stage-in failed: {error}")
            return
        unit.attempts += 1
        unit.pilot_id = pilot.id
        pilot.outstanding[unit.id] = unit.cores
        self._set(unit, Phase.QUEUED, BOUND, f"bound to pilot {pilot.id}")
        pilot.outgoing.append(self._wire(unit))

    def _wire(self, unit: UnitRecord) -> dict[str, Any]:
        wire = unit.description.wire(unit.id)
        wire["attempt"] = unit.attempts
        return wire

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

    def _fail_hopeless(self, service: UnitServiceRecord) -> None:
        """Units that no live or pending pilot can ever run end now, saying why. The
        waiting units are looked at again only when some arrived or the pilots shrank."""
        if not service.waiting:
            return
        candidates = [
            pilot
            for pilot in self._pilots.values()
            if pilot.service_id in service.links and not pilot.done and not pilot.drain
            and (pilot.job is None or not pilot.job.phase.is_final)
        ]  # fmt: skip
        if not candidates:
            self._fail_waiting(service)
            return
        largest = (
            max(pilot.cores_per_node for pilot in candidates),
            max(pilot.cores for pilot in candidates),
        )
        if service.checked is not None and service.checked <= largest:
            return
        per_node, total = largest
        kept: deque[str] = deque()
        for unit_id in service.waiting:
            unit = self._units[unit_id]
            if unit.phase.is_final:
                continue
            if unit.cores <= (per_node if unit.one_node else total):
                kept.append(unit_id)
                continue
            self._end(
                unit, Phase.ERROR, "TOO_BIG",
                f"it needs {unit.cores} cores ({unit.description.number_of_processes} processes,"
                f" launcher {unit.description.chosen_launcher}); the largest live or pending"
                f" pilots have {per_node} cores per node, {total} in all",
            )  # fmt: skip
        service.waiting = kept
        service.checked = largest

    def _fail_waiting(self, service: UnitServiceRecord) -> None:
        if service.had_pilots or any(p.service_id in service.links for p in self._pilots.values()):
            why = "every pilot of its work unit service has ended"
        else:
            why = "no pilot serves its work unit service (add a pilot job service with pilots)"
        for unit_id in list(service.waiting):
            unit = self._units[unit_id]
            if not unit.phase.is_final:
                self._end(unit, Phase.ERROR, "NO_PILOT", why)
        service.waiting.clear()

    # -- recording ---------------------------------------------------------------------------

    def _set(
        self, unit: UnitRecord, phase: Phase, detail: str | None, message: str | None,
        *, backwards: bool = False,
    ) -> None:  # fmt: skip
        if phase is not unit.phase:
            if not backwards and not unit.phase.can_move_to(phase):
                return
            unit.phase = phase
            self._events.append((unit.listeners, unit.id, "state", phase))
        if detail != unit.detail:
            unit.detail = detail
            self._events.append((unit.listeners, unit.id, "state_detail", detail))
        unit.message = message
        self._dirty[unit.id] = unit

    def _end(
        self, unit: UnitRecord, phase: Phase, detail: str | None, message: str | None,
        when: datetime | None = None,
    ) -> None:  # fmt: skip
        unit.ended = when or utcnow()
        if phase is Phase.COMPLETED:
            problem = self._stage_out(unit)
            if problem is not None:
                message = problem
        pilot = self._pilots.get(unit.pilot_id or "")
        if pilot is not None:
            pilot.outstanding.pop(unit.id, None)
        self._set(unit, phase, detail, message)

    def _flush(self) -> None:
        """Record changed units in one transaction, then tell waiters and listeners."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            rows = [unit.row() for unit in dirty.values()]
            self._writing.update(dirty)
            events, self._events = self._events, []
            self._pilot_events(events)
        try:
            self.records.update_units(rows)
        except Exception:
            log.exception("recording %d unit states failed; will try again", len(rows))
            with self._lock:
                for unit_id, unit in dirty.items():
                    self._dirty.setdefault(unit_id, unit)
                self._events = events + self._events
            return
        finally:
            with self._lock:
                self._writing.difference_update(dirty)
        with self._changed:
            self._changed.notify_all()
        for listeners, object_id, member, value in events:
            if listeners.get(member):
                self._callbacks.put(_caller(listeners, object_id, member, value))

    def _pilot_events(
        self, events: list[tuple[dict[str, list[Listener]], str, str, object]]
    ) -> None:
        for pilot in self._pilots.values():
            phase, detail = self._pilot_state(pilot)
            old_phase, old_detail = pilot.shown
            if phase is not old_phase:
                events.append((pilot.listeners, pilot.id, "state", phase))
            if detail != old_detail:
                events.append((pilot.listeners, pilot.id, "state_detail", detail))
            pilot.shown = (phase, detail)

    def _run_callbacks(self) -> None:
        while True:
            call = self._callbacks.get()
            if call is None:
                return
            try:
                call()
            except Exception:
                log.exception("a pilot callback failed")

    # -- recovery ----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Take up every pilot and unfinished unit recorded: units bound to a live pilot are
        sent again (the agent ignores what it has seen), the others wait."""
        for row in self.records.pilots(done=False):
            pilot = self._pilot_from_row(row)
            self._pilots[pilot.id] = pilot
        for service_id in self.records.unit_service_ids():
            found = self.records.unit_service(service_id)
            assert found is not None
            service = UnitServiceRecord(service_id, found["state"], found["retries"], found["pool"])
            service.links = set(self.records.links(service_id))
            service.had_pilots = bool(service.links)
            self._unit_services[service_id] = service
        for unit_row in self.records.units(active_only=True):
            unit = unit_from_row(unit_row)
            self._units[unit.id] = unit
            bound = self._pilots.get(unit.pilot_id or "")
            owner = self._unit_services.get(unit.service_id)
            if bound is not None:
                bound.outstanding[unit.id] = unit.cores
                if unit.phase is Phase.QUEUED:
                    bound.outgoing.append(self._wire(unit))
            elif unit.pilot_id is not None:
                self._hand_back(unit, f"its pilot {unit.pilot_id} ended")
            elif owner is not None:
                owner.waiting.append(unit.id)
                owner.checked = None

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


def _MAX_AHEAD(pilot: PilotRecord) -> int:
    return 50 * pilot.cores + 1000


_RATE_WINDOW = 2.0
"""Seconds over which a pilot's pace is measured."""


def _fits(unit: UnitRecord, pilot: PilotRecord) -> bool:
    return unit.cores <= (pilot.cores_per_node if unit.one_node else pilot.cores)


def _listen(listeners: dict[str, list[Listener]], member: str, listener: Listener | None) -> None:
    if member not in ("state", "state_detail"):
        raise SpecError(f"callbacks are set on 'state' or 'state_detail', not {member!r}")
    if listener is None:
        listeners.pop(member, None)
    else:
        listeners.setdefault(member, []).append(listener)


def _caller(
    listeners: dict[str, list[Listener]], object_id: str, member: str, value: object
) -> Callable[[], None]:
    def call() -> None:
        for listener in list(listeners.get(member, ())):
            try:
                keep = listener(object_id, member, value)
            except Exception:
                log.exception("a callback on %s of %s failed", member, object_id)
                continue
            if keep is False:
                with contextlib.suppress(ValueError):
                    listeners[member].remove(listener)

    return call
