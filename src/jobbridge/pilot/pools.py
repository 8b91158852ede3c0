"""Pilot pools on the coordinating side: the coordinator keeps each pool's pilots running
(a new one when one ends or drains, backing off while new pilots die before their agent
speaks), takes up the jobs other processes recorded as units, and carries out the cancels
they asked for. ``PoolCoordination`` is how a service runs it: it waits for the store's
pilot lease in a thread (another replica may hold it) and coordinates once it has it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jobbridge.errors import JobbridgeError
from jobbridge.pilot.core import CoordinatorSettings
from jobbridge.pilot.lease import CoordinatorBusyError
from jobbridge.pilot.pool import PilotPoolBackend
from jobbridge.pilot.records import SUBMITTED

if TYPE_CHECKING:
    from jobbridge.engine import Engine
    from jobbridge.pilot.coordinator import Coordinator

__all__ = ["PoolCoordination", "PoolKeeper", "pools_of"]

log = logging.getLogger(__name__)

NEWS_INTERVAL = 0.1
"""Seconds between two looks for units and cancels that other processes recorded."""
KEEP_INTERVAL = 1.0
"""Seconds between two counts of each pool's pilots."""
GIVE_UP_AFTER = 5
"""New pilots in a row that end before their agent speaks, after which the pool's waiting
jobs fail (NO_PILOT) instead of waiting; the pool still tries, ever more slowly."""


def pools_of(engine: Engine) -> list[PilotPoolBackend]:
    return [b for b in engine.backends.values() if isinstance(b, PilotPoolBackend)]


@dataclass
class _PoolState:
    failures: int = 0
    next_start: float = 0.0
    seen_ended: set[str] = field(default_factory=set)


class PoolKeeper:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.pools = pools_of(coordinator.engine)
        self._state = {pool.name: _PoolState() for pool in self.pools}
        self._last_keep = 0.0
        self._last_news = 0.0

    def tick(self, now: float) -> None:
        if not self.pools:
            return
        if now - self._last_keep >= KEEP_INTERVAL:
            self._last_keep = now
            for pool in self.pools:
                try:
                    self._keep(pool, now)
                except JobbridgeError as error:
                    log.warning("pilot pool %s: %s", pool.name, error)
        if now - self._last_news >= NEWS_INTERVAL:
            self._last_news = now
            rows = self.coordinator.records.news(
                [pool.unit_service_id for pool in self.pools], SUBMITTED
            )
            if rows:
                self.coordinator.take_up(rows)

    def _keep(self, pool: PilotPoolBackend, now: float) -> None:
        coordinator, state = self.coordinator, self._state[pool.name]
        pool.ensure()
        coordinator.open_unit_service(pool.unit_service_id, units=False)
        pilots = coordinator.pool_pilots(pool.pilot_service_id)
        for pilot in pilots:
            if pilot.done and pilot.id not in state.seen_ended:
                state.seen_ended.add(pilot.id)
                if pilot.agent is None:
                    state.failures += 1
                    state.next_start = now + min(300.0, 5.0 * 2 ** (state.failures - 1))
                    log.warning(
                        "pilot pool %s: pilot %s ended before its agent started (%d in a row)",
                        pool.name, pilot.id, state.failures,
                    )  # fmt: skip
            elif pilot.agent is not None and state.failures:
                state.failures = 0
        coordinator.keep_service(pool.unit_service_id, state.failures < GIVE_UP_AFTER)
        live = [
            pilot
            for pilot in pilots
            if not pilot.done
            and not pilot.draining
            and (pilot.job is None or not pilot.job.phase.is_final)
        ]
        if len(live) < pool.options.pilots and now >= state.next_start:
            try:
                pilot_id = coordinator.create_pilot(
                    pool.pilot_service_id, pool.options.pilot_backend, pool.pilot_description()
                )
            except JobbridgeError:
                state.next_start = now + 30.0
                raise
            log.info("pilot pool %s: started pilot %s", pool.name, pilot_id)


class PoolCoordination:
    """Coordinates the store's pilots (and so the engine's pilot pools) from a thread of its
    own once this process holds the store's pilot lease, until ``stop``."""

    def __init__(self, engine: Engine, settings: CoordinatorSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.coordinator: Coordinator | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jobbridge-pilot-pools", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        from jobbridge.pilot.coordinator import Coordinator

        while not self._stopping.is_set():
            try:
                coordinator = Coordinator(
                    self.engine, self.settings, wait=None, stopping=self._stopping
                )
            except CoordinatorBusyError:
                return  # stopping
            except Exception:
                log.exception("could not start coordinating the pilot pools; trying again")
                self._stopping.wait(5.0)
                continue
            self.coordinator = coordinator
            while coordinator.coordinating and not self._stopping.wait(0.5):
                pass
            coordinator.close()
            self.coordinator = None
            if not self._stopping.is_set():
                time.sleep(0.1)
