"""Handing jobs over, fenced: claims for submission, their heartbeats, and the submissions
whose outcome is unknown (see ``jobbridge.dispatch``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobbridge.job import Handover, Job, utcnow
from jobbridge.phase import Phase
from jobbridge.store.batch import finish_claims
from jobbridge.store.core import StoreCore
from jobbridge.store.rows import changing, chunks, claim_values
from jobbridge.store.schema import jobs

__all__ = ["Handovers"]


class Handovers(StoreCore):
    """The handover column of job rows: waiting, claimed, submitted or uncertain."""

    def claim(self, job_id: str, token: str) -> bool:
        """Take the right to hand a waiting job to its backend; only one caller wins."""
        now = utcnow()
        with self.writing() as conn:
            done = conn.execute(
                changing()
                .where(jobs.c.id == job_id, *_ready(now))
                .values(**claim_values(token, now), attempts=jobs.c.attempts + 1)
            )
            return done.rowcount == 1

    def beat(self, token: str, job_ids: Sequence[str]) -> None:
        """Show that the process holding ``token`` still works on these claims."""
        if not job_ids:
            return
        with self.writing() as conn:
            for chunk in chunks(job_ids):
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id.in_(chunk),
                        jobs.c.claim_token == token,
                        jobs.c.handover == Handover.CLAIMED.value,
                    )
                    .values(heartbeat=utcnow())
                )

    def finish_claim(self, job_id: str, token: str, native_id: str) -> Job | None:
        """Record the native id a claimed submission got, if the claim still holds (it may
        have been judged dead meanwhile, and then only ``adopt`` may take the answer)."""
        return self._set_handover(
            job_id,
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value],
            native_id=native_id,
            handover=Handover.SUBMITTED.value,
            claim_token=None,
            submitting_since=None,
            not_before=None,
        )

    def finish_claims(self, answers: Mapping[str, tuple[str, str]]) -> dict[str, Job]:
        """``finish_claim`` for many jobs in one transaction: job id -> (the token it was
        claimed under, the native id it got). The jobs whose claim still held, by id."""
        return finish_claims(self, answers)

    def adopt(self, job_id: str, native_id: str) -> Job | None:
        """Take a native id found for a submission whose outcome was unknown."""
        return self._set_handover(
            job_id,
            [jobs.c.handover.in_([Handover.UNCERTAIN.value, Handover.WAITING.value])],
            native_id=native_id,
            handover=Handover.SUBMITTED.value,
            claim_token=None,
            submitting_since=None,
            not_before=None,
        )

    def make_uncertain(
        self, job_id: str, token: str, not_before: datetime, message: str
    ) -> Job | None:
        """A claimed submission got no answer: it may have created a native job."""
        return self._set_handover(
            job_id,
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value],
            handover=Handover.UNCERTAIN.value,
            not_before=not_before,
            message=message,
        )

    def expire_claims(self, backend: str, before: datetime, not_before: datetime) -> int:
        """Claims of this backend whose heartbeat stopped before ``before``: their process is
        gone, so what it did is unknown. Returns how many there were."""
        stale = (
            jobs.c.backend == backend,
            jobs.c.handover == Handover.CLAIMED.value,
            jobs.c.native_id.is_(None),
            sa.or_(jobs.c.heartbeat.is_(None), jobs.c.heartbeat < before),
        )
        with self.reading() as conn:  # most cycles find none: no write transaction then
            if conn.execute(sa.select(jobs.c.id).where(*stale).limit(1)).first() is None:
                return 0
        with self.writing() as conn:
            done = conn.execute(
                changing()
                .where(*stale)
                .values(
                    handover=Handover.UNCERTAIN.value,
                    not_before=not_before,
                    message="the process submitting it stopped showing life; looking for it",
                )
            )
            return int(done.rowcount)

    def retry_later(
        self, job_id: str, not_before: datetime, message: str, *, token: str | None = None
    ) -> Job | None:
        """Give a claimed (``token``) or uncertain submission back to waiting, not to be
        tried again before ``not_before``."""
        guard = (
            [jobs.c.claim_token == token, jobs.c.handover == Handover.CLAIMED.value]
            if token is not None
            else [jobs.c.handover == Handover.UNCERTAIN.value]
        )
        return self._set_handover(
            job_id,
            [*guard, jobs.c.native_id.is_(None)],
            handover=Handover.WAITING.value,
            claim_token=None,
            submitting_since=None,
            not_before=not_before,
            message=message,
        )

    def settle_unsubmitted(self, job_id: str) -> None:
        """An ended job whose uncertain submission created nothing: nothing to look for."""
        self._set_handover(
            job_id,
            [jobs.c.handover == Handover.UNCERTAIN.value, jobs.c.native_id.is_(None)],
            handover=Handover.WAITING.value,
            claim_token=None,
            submitting_since=None,
        )

    def _set_handover(
        self, job_id: str, guard: list[sa.ColumnElement[bool]], **values: Any
    ) -> Job | None:
        with self.writing() as conn:
            return self._changed(
                conn, job_id, changing().where(jobs.c.id == job_id, *guard).values(**values)
            )

    def waiting(self, backend: str, now: datetime) -> list[Job]:
        """Jobs queued in jobbridge for this backend that may be handed over now."""
        query = (
            sa.select(jobs)
            .where(jobs.c.backend == backend, *_ready(now))
            .order_by(jobs.c.created, jobs.c.id)
        )
        with self.reading() as conn:
            return [self._job(row) for row in conn.execute(query)]

    def uncertain(self, backend: str) -> list[tuple[Job, datetime | None]]:
        """Jobs whose submission may or may not have created a native job, in any phase,
        each with the time before which the backend's not knowing it proves nothing."""
        query = sa.select(jobs).where(
            jobs.c.backend == backend, jobs.c.handover == Handover.UNCERTAIN.value
        )
        with self.reading() as conn:
            return [(self._job(row), row.not_before) for row in conn.execute(query)]


def _ready(now: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    """Queued in jobbridge, not handed over, and not to wait any longer."""
    return (
        jobs.c.phase == Phase.QUEUED.value,
        jobs.c.handover == Handover.WAITING.value,
        jobs.c.native_id.is_(None),
        sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now),
    )
