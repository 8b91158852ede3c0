"""Phase changes made by other processes on the same PostgreSQL store (replicas of the
service), heard through ``LISTEN``.

Every phase change and deletion of a job is announced on ``JOB_CHANNEL`` in the transaction
that makes it (see ``Store.move``). A ``JobListener`` listens on a connection of its own, in a
thread of its own, and hands each job id it hears, with the job's new phase, to ``on_job``.
Notifications sent while it was not listening are lost; so after every (re)connection, once
it listens again, it calls ``on_gap``, and the waiters it serves look at their jobs again.
A connection that dropped is noticed at once, or, if it died silently, by TCP keep-alives
and a query every ``check_every`` seconds; it is then opened again, with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from jobbridge.store.store import JOB_CHANNEL

__all__ = ["JobListener"]

log = logging.getLogger(__name__)

_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "connect_timeout": 10,
}
_STOP_CHECK = 0.5
"""Seconds between looks at whether to stop, while nothing is heard."""


class JobListener:
    def __init__(
        self,
        url: str,
        on_job: Callable[[str, str], object],
        on_gap: Callable[[], object],
        *,
        check_every: float = 10.0,
        max_retry_delay: float = 10.0,
    ) -> None:
        self.url = url
        self.on_job = on_job
        self.on_gap = on_gap
        self.check_every = check_every
        self.max_retry_delay = max_retry_delay
        self.listening = threading.Event()
        """Set while the listener listens (for tests and health checks)."""
        self.connections = 0
        """How many times it has started listening."""
        self.backend_pid: int | None = None
        """The server process of the connection it listens on (for tests and operators)."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="jobbridge-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception as error:
                if self._stopping.is_set():
                    return
                log.warning("listening for job changes failed (again in %g s): %s", delay, error)
            finally:
                self.listening.clear()
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.max_retry_delay)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(autocommit=True, **_connect_args(self.url)) as conn:
            conn.execute(f"LISTEN {JOB_CHANNEL}")
            self.backend_pid = conn.info.backend_pid
            self.connections += 1
            self.listening.set()
            self.on_gap()  # what was said while nobody listened is lost: look again
            checked = time.monotonic()
            while not self._stopping.is_set():
                for notify in conn.notifies(timeout=_STOP_CHECK):
                    job_id, _, phase = notify.payload.partition(" ")
                    self.on_job(job_id, phase)
                if time.monotonic() - checked >= self.check_every:
                    conn.execute("SELECT 1")  # a silently dead connection raises here
                    checked = time.monotonic()


def _connect_args(url: str) -> dict[str, Any]:
    """What psycopg needs to reach the store's database, as SQLAlchemy would connect."""
    engine = sa.create_engine(url)
    try:
        args, params = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    params.pop("context", None)
    if args:
        params["conninfo"] = args[0]
    return {**_KEEPALIVES, **params, "application_name": "jobbridge-listen"}
