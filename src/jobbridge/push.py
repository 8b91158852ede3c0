"""Jobs that tell the service when their program starts and ends (push, not poll).

A job script, or the local backend's runner, POSTs ``event=started|ended`` (with
``index=N`` for an array member) and a per-job token to ``{url}/{job id}``. The token is an
HMAC of the job's id (its array's, for a member) under a key only the service holds, so it
proves which job speaks and nothing more: a push is never taken as the job's phase. It only
makes the engine read the job's own records at once (the exit-code file its script wrote
before pushing, the local runner's result) or ask its backend about that one job, and apply
the answer through the normal fenced phase change. A repeated or late push changes nothing,
and a job whose push never arrives is found by polling as before.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from jobbridge.errors import JobNotFoundError
from jobbridge.job import Handover, Job

if TYPE_CHECKING:
    from jobbridge.backends.base import Backend
    from jobbridge.dispatch import Mover
    from jobbridge.store import Store

__all__ = ["PushAddress", "PushEvent", "PushKey", "PushReceiver"]

log = logging.getLogger(__name__)

HANDOVER_PATIENCE = 2.0
"""Seconds a push waits for the submission of its job to be recorded: a job may start, and
push, before the process that submitted it has written down its native id."""

_KEY_LABEL = b"jobbridge push key"


class PushEvent(StrEnum):
    STARTED = "started"
    ENDED = "ended"


@dataclass(frozen=True)
class PushKey:
    """The service's key for push tokens; replicas of one service share it."""

    secret: bytes = field(repr=False)

    @classmethod
    def derived(cls, service_secret: bytes) -> PushKey:
        """A key of its own, made from the service's (shared) cookie secret."""
        return cls(hmac.new(service_secret, _KEY_LABEL, hashlib.sha256).digest())

    def token(self, job_id: str) -> str:
        return hmac.new(self.secret, job_id.encode(), hashlib.sha256).hexdigest()

    def verify(self, job_id: str, token: str) -> bool:
        return hmac.compare_digest(self.token(job_id).encode(), token.encode())


@dataclass(frozen=True)
class PushAddress:
    """Where jobs push to: ``url`` is the push endpoint, without the job id."""

    url: str
    key: PushKey = field(repr=False)

    def url_for(self, job_id: str) -> str:
        return f"{self.url.rstrip('/')}/{job_id}"

    def token(self, job_id: str) -> str:
        return self.key.token(job_id)


class PushReceiver:
    """Turns a verified push into a look at the job's own records, applied through the
    engine's fenced phase change (``move``)."""

    def __init__(self, store: Store, backends: Mapping[str, Backend], move: Mover) -> None:
        self._store = store
        self._backends = backends
        self._move = move

    def receive(self, job_id: str, event: PushEvent, index: int | None = None) -> Job | None:
        """Settle what the job's records say now; the job as it is after, or None if
        nothing changed. ``job_id`` is the id the job's script knows (its array's, with
        ``index``); ``JobNotFoundError`` if no such job is stored."""
        job = self._job(job_id, index)
        deadline = time.monotonic() + HANDOVER_PATIENCE
        while job.handover is Handover.CLAIMED and time.monotonic() < deadline:
            time.sleep(0.01)
            job = self._store.get(job.id)
        backend = self._backends.get(job.backend)
        if backend is None or not job.phase.is_active or not job.is_submitted:
            return None
        try:
            status = backend.pushed(job, event)
        except Exception as error:  # polling will tell
            log.warning("job %s pushed %s; reading its records failed: %s", job.id, event, error)
            return None
        if status is None:
            return None
        return self._move(job, status.phase, status)

    def _job(self, job_id: str, index: int | None) -> Job:
        if index is None:
            return self._store.get(job_id)
        for member in self._store.find(array_id=job_id, array_index=index, limit=1):
            return member
        raise JobNotFoundError(f"{job_id}[{index}]")
