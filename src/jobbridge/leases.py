"""Leases: of several processes on one store (replicas of a service), one at a time polls a
given backend, resolves its uncertain submissions and hands its waiting jobs over, and one at
a time destroys expired jobs.

A lease is a row in the store, taken and renewed by compare-and-set (see
``Store.take_lease``). A ``LeaseKeeper`` renews the leases its process wants every third of
their duration, from a thread of its own, so that a long refresh cycle never lets them lapse.
Whether the process holds a lease is judged by its own monotonic clock, from the moment
before it asked for the lease, a little short of the full duration: by the time another
process may see the lease expired, this one has already stopped counting on it. When the
process dies, its leases expire and another process takes them over; when it stops, it gives
them up at once. Work done twice during a hand-over does no harm: claims are fenced and phase
changes are compare-and-set.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable

from jobbridge.store import Store

__all__ = ["LeaseKeeper", "backend_lease", "new_holder"]

log = logging.getLogger(__name__)

DESTROY_LEASE = "destroy"
"""The lease under which expired jobs are destroyed."""

_SAFETY = 0.9
"""The share of a lease's duration that its holder counts on."""


def backend_lease(backend: str) -> str:
    """The name of the lease under which a backend is polled."""
    return f"backend:{backend}"


def new_holder() -> str:
    """Names this process (host and pid, for people) and this keeper (for the store)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        duration: float,
        names: Iterable[str],
        *,
        holder: str | None = None,
        on_taken: Callable[[str], object] | None = None,
    ) -> None:
        self.store = store
        self.on_taken = on_taken
        """Called with the lease's name when this keeper takes a lease it did not hold."""
        self.duration = duration
        self.holder = holder or new_holder()
        self._valid_until = dict.fromkeys(names, 0.0)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> list[str]:
        return list(self._valid_until)

    def holds(self, name: str) -> bool:
        """Whether this process may do the work of lease ``name`` now."""
        with self._lock:
            return time.monotonic() < self._valid_until.get(name, 0.0)

    def renew(self) -> None:
        """Take or renew every lease wanted, once."""
        for name in self.names:
            asked = time.monotonic()
            try:
                held = self.store.take_lease(name, self.holder, self.duration)
            except Exception as error:  # it lapses by itself unless a later renewal succeeds
                log.warning("could not renew lease %s: %s", name, error)
                continue
            with self._lock:
                was = asked < self._valid_until[name]
                self._valid_until[name] = asked + self.duration * _SAFETY if held else 0.0
            if held and not was:
                log.info("took lease %s as %s", name, self.holder)
                if self.on_taken is not None:
                    self.on_taken(name)
            elif was and not held:
                log.warning("lost lease %s: another process holds it", name)

    def start(self) -> None:
        """Renew in a thread of its own, every third of the duration, until ``stop``."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self.renew()
        self._thread = threading.Thread(target=self._run, name="jobbridge-leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and give up every lease held, for other processes to take at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for name in self.names:
            with self._lock:
                self._valid_until[name] = 0.0
            try:
                self.store.release_lease(name, self.holder)
            except Exception as error:
                log.warning("could not give up lease %s (it will expire): %s", name, error)

    def _run(self) -> None:
        while not self._stopping.wait(self.duration / 3):
            self.renew()
