"""Taking up what the store holds: every pilot and unfinished unit when a coordinator starts,
and, while it runs, the units and cancels that other processes recorded for the pilot pools
(see ``pools``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from jobbridge.phase import Phase
from jobbridge.pilot.exchange import Exchange
from jobbridge.pilot.records import (
    SUBMITTED,
    WAITING,
    PilotRecord,
    UnitServiceRecord,
    unit_from_row,
)

__all__ = ["Recovery"]

log = logging.getLogger(__name__)


class Recovery(Exchange):
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

    def pool_pilots(self, pilot_service_id: str) -> list[PilotRecord]:
        with self._lock:
            return [p for p in self._pilots.values() if p.service_id == pilot_service_id]

    def keep_service(self, service_id: str, kept: bool) -> None:
        """Whether the service's waiting units wait for pilots to come (a pool's) rather
        than fail when none is live or pending."""
        with self._lock:
            self._unit_services[service_id].kept = kept

    def take_up(self, rows: Sequence[dict[str, Any]]) -> None:
        """Units that another process recorded, and cancels it asked for."""
        with self._lock:
            for row in rows:
                unit = self._units.get(row["id"])
                service = self._unit_services.get(row["service_id"])
                if service is None:
                    continue
                if unit is None:
                    unit = self._units[row["id"]] = unit_from_row(row)
                    service.waiting.append(unit.id)
                    service.checked = None
                if unit.detail == SUBMITTED and unit.phase is Phase.QUEUED:
                    self._set(unit, Phase.QUEUED, WAITING, None)
                if row["cancel_asked"] and not unit.cancel_asked:
                    self._cancel(unit)
        self._flush()
        self._wake.set()
