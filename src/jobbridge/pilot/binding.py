"""Late binding: waiting units go to whichever pilot has room, oldest first; units that no
live or pending pilot can ever fit, or that no pilot serves any more, end at once; a unit
whose pilot ended is bound again, up to its retries."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

from jobbridge.errors import JobbridgeError
from jobbridge.phase import Phase
from jobbridge.pilot.recording import Recording
from jobbridge.pilot.records import (
    BOUND,
    RESCHEDULED,
    WAITING,
    PilotRecord,
    UnitRecord,
    UnitServiceRecord,
)

__all__ = ["Binding"]

log = logging.getLogger(__name__)


class Binding(Recording):
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
            if not service.kept:
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

    def _cancel(self, unit: UnitRecord) -> None:
        """Stop a unit: at once if no pilot has it, else through its pilot (lock held)."""
        if unit.phase.is_final:
            return
        unit.cancel_asked = True
        pilot = self._pilots.get(unit.pilot_id or "")
        if pilot is None:
            self._end(unit, Phase.ABORTED, "CANCELLED", "cancelled")
        else:
            pilot.cancels.append(unit.id)

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


def _MAX_AHEAD(pilot: PilotRecord) -> int:
    return 50 * pilot.cores + 1000


_RATE_WINDOW = 2.0
"""Seconds over which a pilot's pace is measured."""


def _fits(unit: UnitRecord, pilot: PilotRecord) -> bool:
    return unit.cores <= (pilot.cores_per_node if unit.one_node else pilot.cores)
