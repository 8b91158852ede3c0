"""WAIT: requests blocked on a job are woken by the engine's phase-change events.

The engine announces phase changes in its refresh thread; each announcement is carried into
the event loop with ``call_soon_threadsafe`` and sets the events of the requests waiting on
that job. Changes made by other replicas on a PostgreSQL store come the same way, through
``poke`` (see ``notify.JobListener``), and ``poke_all`` wakes every request after
notifications may have been lost. This replica's own changes reach it both ways; the second
word of one change is dropped (the phase each job was last announced in is remembered), so
that it never wakes a request made after the first. Nothing polls the database.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from jobbridge.hooks import Hooks
from jobbridge.job import Job
from jobbridge.phase import Phase

__all__ = ["DELETED", "PhaseWaiters"]

DELETED = "DELETED"
"""What ``poke`` is told for a job that was deleted."""
_REMEMBERED = 10_000
"""Jobs whose last announced phase is remembered, the latest ones."""


class PhaseWaiters:
    def __init__(self, loop: asyncio.AbstractEventLoop, hooks: Hooks) -> None:
        self._loop = loop
        self._hooks = hooks
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._announced: OrderedDict[str, str] = OrderedDict()
        hooks.on_phase_change(self._from_engine)
        hooks.on_delete(self._deleted_from_engine)

    def close(self) -> None:
        """Stop listening to the engine."""
        for callbacks, callback in (
            (self._hooks.phase_change, self._from_engine),
            (self._hooks.deleted, self._deleted_from_engine),
        ):
            if callback in callbacks:
                callbacks.remove(callback)  # type: ignore[arg-type]

    def _from_engine(self, job: Job, _old: Phase) -> None:
        self.poke(job.id, job.phase.value)

    def _deleted_from_engine(self, job: Job) -> None:
        self.poke(job.id, DELETED)

    def poke(self, job_id: str, phase: str) -> None:
        """The job moved to ``phase`` (or was ``DELETED``); from any thread."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, job_id, phase)

    def poke_all(self) -> None:
        """Wake every waiting request (from any thread), to look at its job again."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake_all)

    def _wake(self, job_id: str, phase: str) -> None:
        if self._announced.get(job_id) == phase:
            return  # heard already, the other way
        self._announced[job_id] = phase
        self._announced.move_to_end(job_id)
        if len(self._announced) > _REMEMBERED:
            self._announced.popitem(last=False)
        for event in self._events.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set at the job's next phase change. Enter it before reading the job's
        phase, so that a change between the read and the wait is not missed."""
        event = asyncio.Event()
        self._events[job_id].add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]


async def wait_for(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` was set within ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
