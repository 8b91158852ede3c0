"""Recording unit states: changes are kept in memory and written to the store in batches,
then waiters are woken and callbacks run, in order, on a thread of their own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from jobbridge.errors import SpecError
from jobbridge.job import utcnow
from jobbridge.phase import Phase
from jobbridge.pilot.core import CoordinatorCore
from jobbridge.pilot.records import (
    Listener,
    UnitRecord,
)

__all__ = ["Recording", "listen"]

log = logging.getLogger(__name__)


class Recording(CoordinatorCore):
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


def listen(listeners: dict[str, list[Listener]], member: str, listener: Listener | None) -> None:
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
