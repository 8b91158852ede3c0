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

This module is the facade and the loop; the parts, each on the one before: ``core`` (shared
state, the way to a pilot's directory), ``recording`` (batched writes, callbacks),
``binding`` (late binding, units that can never run, hand-backs), ``exchange`` (the
mailboxes, what agents say, pilots that end) and ``recovery`` (taking a store up again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from jobbridge.engine import Engine
from jobbridge.errors import JobbridgeError, JobStateError
from jobbridge.job import new_job_id, utcnow
from jobbridge.pilot import agent as agent_module
from jobbridge.pilot.core import CoordinatorSettings
from jobbridge.pilot.description import (
    PilotJobDescription,
    WorkUnitDescription,
)
from jobbridge.pilot.launch import pilot_spec, walltime_seconds
from jobbridge.pilot.lease import COORDINATOR_LEASE, busy, take_coordination
from jobbridge.pilot.pools import PoolKeeper
from jobbridge.pilot.recording import listen
from jobbridge.pilot.records import (
    Listener,
    PilotRecord,
    ServiceState,
    UnitRecord,
    UnitServiceRecord,
    unit_from_row,
)
from jobbridge.pilot.recovery import Recovery
from jobbridge.pilot.resources import resolve_backend
from jobbridge.store.pilots import pilots

__all__ = ["Coordinator", "CoordinatorSettings"]

log = logging.getLogger(__name__)


class Coordinator(Recovery):
    """Binds work units to pilots, over one engine. ``close`` stops it; pilots run on."""

    def __init__(
        self,
        engine: Engine,
        settings: CoordinatorSettings | None = None,
        *,
        wait: float | None = 0.0,
        stopping: threading.Event | None = None,
    ) -> None:
        """Coordinate the store's pilots, once this process holds the store's pilot lease:
        waits for it at most ``wait`` seconds (None: until it comes or ``stopping`` is set),
        then raises ``CoordinatorBusyError`` naming the holder."""
        super().__init__(engine, settings)
        duration = self.settings.lease_duration or engine.settings.lease_duration
        self._lease = take_coordination(engine.store, duration, wait, stopping)
        self._lost = False
        try:
            self._recover()
        except BaseException:
            self._lease.stop()
            raise
        self._pools = PoolKeeper(self)
        self._caller = threading.Thread(
            target=self._run_callbacks, name="jobbridge-pilot-callbacks", daemon=True
        )
        self._caller.start()
        self._loop = threading.Thread(target=self._run, name="jobbridge-pilots", daemon=True)
        self._loop.start()

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
        self._require_lease()
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

        def also(conn: Any, _jobs: object) -> None:
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

    def new_unit_service(self, retries: int | None = None, pool: str | None = None) -> str:
        service_id = new_job_id()
        retries = self.settings.default_retries if retries is None else retries
        self.records.add_unit_service(service_id, ServiceState.ACTIVE, retries, utcnow(), pool)
        with self._lock:
            self._unit_services[service_id] = UnitServiceRecord(
                service_id, ServiceState.ACTIVE, retries, pool
            )
        return service_id

    def open_unit_service(self, service_id: str, *, units: bool = True) -> None:
        """Know the service and (with ``units``) all its units (a reconnection)."""
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
        if not units:
            return
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
        self._require_lease()
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
            self._cancel(self._unit(unit_id))
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
            part = (unit.output or {}).get(suffix)
            if part:  # a stretch of the file its agent's worker shares among its units
                name, start, *end = part
                return mailbox.read(
                    str(name), int(start), int(end[0]) - int(start) if end else None
                )
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
                self._require_lease()
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
            listen(self._unit(unit_id).listeners, member, listener)

    def listen_pilot(self, pilot_id: str, member: str, listener: Listener | None) -> None:
        pilot = self._pilot(pilot_id)
        with self._lock:
            listen(pilot.listeners, member, listener)

    def close(self) -> None:
        """Stop coordinating; pilots and their agents run on (a new coordinator resumes)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._loop.join()
        if not self._lost:
            self._flush()
        self._callbacks.put(None)
        self._caller.join()
        self._lease.stop()

    @property
    def coordinating(self) -> bool:
        """Whether this coordinator still holds the store's pilot lease and works."""
        return not self._lost and not self._stopping.is_set()

    def _require_lease(self) -> None:
        if self._lost:
            raise busy(self.engine.store)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._lease.holds(COORDINATOR_LEASE):
                # another process may coordinate now: what this one knows is stale
                log.error("lost the pilot lease of this store; this coordinator stops")
                self._lost = True
                with self._changed:
                    self._changed.notify_all()
                return
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
        self._pools.tick(now)
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
        self._acknowledge(active)
