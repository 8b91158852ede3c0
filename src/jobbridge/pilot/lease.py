"""One coordinator per store: a coordinator binds units and talks to agents only while it
holds the store's pilot lease (see ``leases``). A second one on the same store waits for the
lease as long as it is told to, then reports who holds it; when the holder dies, its lease
expires and the waiting one takes it over and takes up every pilot and unit from the store.
"""

from __future__ import annotations

import threading
import time

from jobbridge.errors import JobbridgeError
from jobbridge.leases import LeaseKeeper
from jobbridge.store import Store

__all__ = ["COORDINATOR_LEASE", "CoordinatorBusyError", "busy", "take_coordination"]

COORDINATOR_LEASE = "pilots"
"""The lease under which a process coordinates a store's pilots and work units."""


class CoordinatorBusyError(JobbridgeError):
    """Another process coordinates the pilots of this store."""

    retryable = True

    def __init__(self, holder: str | None, expires: str | None) -> None:
        self.holder = holder
        who = f"process {holder}" if holder else "another process"
        until = f" (its lease runs until {expires} unless renewed)" if expires else ""
        super().__init__(
            f"{who} coordinates the pilots of this store{until}; one coordinator per store"
            " at a time: stop it, or wait for it"
        )


def take_coordination(
    store: Store,
    duration: float,
    wait: float | None,
    stopping: threading.Event | None = None,
) -> LeaseKeeper:
    """The store's pilot lease, held and renewed from now on; waits for it at most ``wait``
    seconds (None: as long as it takes, or until ``stopping`` is set)."""
    keeper = LeaseKeeper(store, duration, [COORDINATOR_LEASE])
    deadline = None if wait is None else time.monotonic() + wait
    pause = min(1.0, duration / 3)
    while True:
        keeper.renew()
        if keeper.holds(COORDINATOR_LEASE):
            keeper.start()
            return keeper
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or (stopping is not None and stopping.is_set()):
            raise busy(store)
        delay = pause if left is None else min(pause, left)
        if stopping is not None:
            stopping.wait(delay)
        else:
            time.sleep(delay)


def busy(store: Store) -> CoordinatorBusyError:
    """The error naming the process that holds the store's pilot lease now."""
    held = store.leases().get(COORDINATOR_LEASE)
    if held is None:
        return CoordinatorBusyError(None, None)
    holder, expires = held
    return CoordinatorBusyError(holder, expires.isoformat(timespec="seconds"))
