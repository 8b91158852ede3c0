"""Taking up a store's pilots and unfinished units when a coordinator starts."""

from __future__ import annotations

import logging

from jobbridge.phase import Phase
from jobbridge.pilot.exchange import Exchange
from jobbridge.pilot.records import (
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
