"""An engine running in the background (as the service runs it): one refresh thread per
backend, one that destroys expired jobs, and workers for hooks and stage-out, so that a slow
or dead cluster, a slow hook or a long transfer delays nothing else. Each thread works only
while its engine holds the matching lease, so that of several engines on one store one at a
time polls a backend (or destroys expired jobs).

A backend with no active job is refreshed less and less often, up to
``idle_refresh_interval``: an idle service costs next to nothing. Whatever gives it work
wakes its thread at once (``wake``): a job recorded or changing phase in this process, a lease
taken over, a change another replica announces."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from jobbridge.backends.base import Backend
from jobbridge.config import EngineSettings
from jobbridge.leases import DESTROY_LEASE, LeaseKeeper, backend_lease
from jobbridge.store import Store

__all__ = ["LOOP_TICK_FLOOR", "Background"]

log = logging.getLogger(__name__)

LOOP_TICK_FLOOR = 0.05
"""The shortest pause between two refresh cycles, whatever the settings say."""


@dataclass
class IdlePause:
    """The pause after a refresh cycle: ``tick`` while the backend has work, doubling up to
    ``longest`` while it has none."""

    tick: float
    longest: float
    current: float = 0.0

    def after(self, busy: bool) -> float:
        if busy:
            self.current = self.tick
        else:
            self.current = min(max(self.longest, self.tick), max(self.current, self.tick) * 2)
        return self.current


class Background:
    def __init__(
        self,
        store: Store,
        settings: EngineSettings,
        refresh_backend: Callable[[Backend], None],
        destroy_expired: Callable[[], None],
    ) -> None:
        self.store = store
        self.settings = settings
        self._refresh_backend = refresh_backend
        self._destroy_expired = destroy_expired
        self._stopping = threading.Event()
        self._wakes: dict[str, threading.Event] = {}
        self._loops: list[threading.Thread] = []
        self._leases: LeaseKeeper | None = None
        self.hook_runner: ThreadPoolExecutor | None = None
        """Runs hooks in order, off the polling threads; None in the foreground."""
        self.stager: ThreadPoolExecutor | None = None
        """Brings outputs back off the polling threads; None in the foreground."""

    @property
    def running(self) -> bool:
        return any(loop.is_alive() for loop in self._loops)

    def start(self, backends: Mapping[str, Backend]) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._wakes = {name: threading.Event() for name in backends}
        self._leases = LeaseKeeper(
            self.store,
            self.settings.lease_duration,
            [*(backend_lease(name) for name in backends), DESTROY_LEASE],
            on_taken=lambda _name: self.wake(),
        )
        self._leases.start()
        self.hook_runner = ThreadPoolExecutor(1, thread_name_prefix="jobbridge-hooks")
        self.stager = ThreadPoolExecutor(2, thread_name_prefix="jobbridge-stage-out")
        self._loops = [
            threading.Thread(
                target=self._run_backend, args=(backend,), name=f"jobbridge-{name}", daemon=True
            )
            for name, backend in backends.items()
        ]
        self._loops.append(
            threading.Thread(target=self._run_destroyer, name="jobbridge-destroy", daemon=True)
        )
        for loop in self._loops:
            loop.start()

    def wake(self, backend: str | None = None) -> None:
        """Refresh ``backend`` (None: every backend) now rather than after an idle pause."""
        wakes = list(self._wakes.values()) if backend is None else [self._wakes.get(backend)]
        for wake in wakes:
            if wake is not None:
                wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        for loop in self._loops:
            loop.join()
        self._loops = []
        if self._leases is not None:
            self._leases.stop()
            self._leases = None
        for pool in (self.stager, self.hook_runner):
            if pool is not None:
                pool.shutdown(wait=True)
        self.stager = self.hook_runner = None

    def _run_backend(self, backend: Backend) -> None:
        tick = max(
            LOOP_TICK_FLOOR,
            min(self.settings.refresh_interval, backend.options.min_refresh_interval),
        )
        pause = IdlePause(tick, self.settings.idle_refresh_interval)
        lease = backend_lease(backend.name)
        wake = self._wakes[backend.name]
        while not self._stopping.is_set():
            wake.clear()  # a wake-up from here on is for the next cycle
            busy = False
            if self._holds(lease):
                try:
                    self._refresh_backend(backend)
                    busy = self.store.has_active(backend.name)
                except Exception:
                    log.exception("refresh cycle of %s failed", backend.name)
                    busy = True
            if busy:  # cycles come at their pace; a wake-up only cuts an idle pause short
                self._stopping.wait(pause.after(busy))
            else:
                wake.wait(pause.after(busy))

    def _run_destroyer(self) -> None:
        while not self._stopping.is_set():
            if self._holds(DESTROY_LEASE):
                try:
                    self._destroy_expired()
                except Exception:
                    log.exception("destroying expired jobs failed")
            self._stopping.wait(self.settings.refresh_interval)

    def _holds(self, lease: str) -> bool:
        leases = self._leases
        return leases is not None and leases.holds(lease)
