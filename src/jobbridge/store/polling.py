"""What polling keeps in the store: the jobs each backend holds (listed cheaply, every
cycle), the jobs a backend could not find, and the leases that decide which replica polls
which backend (see ``jobbridge.polling`` and ``jobbridge.leases``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobbridge.job import Job, utcnow
from jobbridge.phase import ACTIVE_PHASES
from jobbridge.store.core import StoreCore
from jobbridge.store.rows import changing, chunks
from jobbridge.store.schema import jobs, leases

__all__ = ["Polling"]


class Polling(StoreCore):
    """Listings of handed-over jobs, misses and leases."""

    def handed_over(self, backend: str, only: Sequence[str] | None = None) -> list[Job]:
        """The active jobs that this backend holds (with a native id), oldest first; with
        ``only``, those of them. Only ids and versions are read for all; whole rows only
        where the version changed since this store last parsed them, so an unchanged job
        costs neither parsing nor validation. On SQLite, when nothing at all was committed
        since the last listing of all, not even the ids are read again."""
        listing = (
            sa.select(jobs.c.id, jobs.c.version)
            .where(
                jobs.c.backend == backend,
                jobs.c.phase.in_([p.value for p in ACTIVE_PHASES]),
                jobs.c.native_id.is_not(None),
            )
            .order_by(jobs.c.created, jobs.c.id)
        )
        moment = None if only is not None else self._watch.version()  # before the listing
        with self.reading() as conn:
            known = self._listings.get(backend)
            if moment is not None and known is not None and known[0] == moment:
                listed = known[1]  # nothing was committed since: the same jobs, unchanged
            elif only is not None:
                listed = [
                    (job_id, version)
                    for chunk in chunks(only)
                    for job_id, version in conn.execute(listing.where(jobs.c.id.in_(chunk)))
                ]
            else:
                listed = [(job_id, version) for job_id, version in conn.execute(listing)]
                if moment is not None:
                    self._listings[backend] = (moment, listed)
            found = self._as_now(conn, dict(listed))
        return [found[job_id] for job_id, _ in listed if job_id in found]

    # -- jobs the backend cannot find ----------------------------------------------------------

    def count_misses(self, job_ids: Sequence[str], now: datetime) -> None:
        """One more status query found these jobs nowhere."""
        with self.writing() as conn:
            for chunk in chunks(job_ids):
                conn.execute(
                    changing()
                    .where(jobs.c.id.in_(chunk))
                    .values(
                        misses=jobs.c.misses + 1,
                        missing_since=sa.func.coalesce(jobs.c.missing_since, now),
                    )
                )

    def clear_misses(self, job_ids: Sequence[str]) -> None:
        """These jobs were found again."""
        with self.writing() as conn:
            for chunk in chunks(job_ids):
                conn.execute(
                    changing()
                    .where(jobs.c.id.in_(chunk), jobs.c.misses > 0)
                    .values(misses=0, missing_since=None)
                )

    # -- leases --------------------------------------------------------------------------------

    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease ``name`` for ``seconds`` if it is free, has expired or is
        ``holder``'s already (then this renews it): a compare-and-set, so that of several
        callers at most one holds it. True if ``holder`` holds it now. On PostgreSQL the
        database's clock is the only one that counts, so the processes' clocks may differ."""
        now, until = self._lease_times(seconds)
        with self.writing() as conn:
            renewed = conn.execute(
                leases.update()
                .where(
                    leases.c.name == name,
                    sa.or_(leases.c.holder == holder, leases.c.expires < now),
                )
                .values(holder=holder, expires=until)
            )
            if renewed.rowcount == 1:
                return True
            taken = conn.execute(sa.select(leases.c.name).where(leases.c.name == name)).first()
            if taken is not None:
                return False
        try:
            with self.writing() as conn:
                conn.execute(leases.insert().values(name=name, holder=holder, expires=until))
        except sa.exc.IntegrityError:
            return False  # another caller created it first
        return True

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once, if ``holder`` has it, for another process to take."""
        with self.writing() as conn:
            conn.execute(leases.delete().where(leases.c.name == name, leases.c.holder == holder))

    def leases(self) -> dict[str, tuple[str, datetime]]:
        """Every lease: its holder and when it expires unless renewed."""
        with self.reading() as conn:
            rows = conn.execute(sa.select(leases))
            return {row.name: (row.holder, row.expires) for row in rows}

    def _lease_times(self, seconds: float) -> tuple[Any, Any]:
        now: Any = sa.func.clock_timestamp() if self.dialect == "postgresql" else utcnow()
        return now, now + timedelta(seconds=seconds)
