"""Heartbeats for claimed submissions. While a process submits jobs it has claimed, a
thread keeps the claims' heartbeat fresh in the store; another process takes a claim to be
dead only once its heartbeat is older than ``claim_timeout``. A slow submission that is
alive is therefore never judged interrupted, however long the scheduler takes."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from jobbridge.store import Store

__all__ = ["ClaimKeeper", "new_token"]

log = logging.getLogger(__name__)


def new_token() -> str:
    """A fencing token: names one claim, so that only its holder can complete it."""
    return secrets.token_hex(16)


class ClaimKeeper:
    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._held: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, token: str, job_ids: Sequence[str]) -> Iterator[None]:
        """Keep these claims alive for as long as the block runs."""
        self.hold(token, job_ids)
        try:
            yield
        finally:
            self.let_go(token, job_ids)

    def hold(self, token: str, job_ids: Sequence[str]) -> None:
        """Keep these claims alive until ``let_go``; holds of one claim add up, so that
        several workers may share a token."""
        with self._lock:
            held = self._held.setdefault(token, {})
            for job_id in job_ids:
                held[job_id] = held.get(job_id, 0) + 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._beat, name="jobbridge-claims", daemon=True
                )
                self._thread.start()

    def let_go(self, token: str, job_ids: Sequence[str]) -> None:
        with self._lock:
            held = self._held.get(token)
            if held is None:
                return
            for job_id in job_ids:
                left = held.get(job_id, 0) - 1
                if left > 0:
                    held[job_id] = left
                else:
                    held.pop(job_id, None)
            if not held:
                del self._held[token]

    def _beat(self) -> None:
        while True:
            with self._lock:
                self._wake.wait(self.interval)
                held = {token: list(ids) for token, ids in self._held.items()}
            if not held:
                with self._lock:
                    if not self._held:
                        self._thread = None
                        return
                continue
            for token, job_ids in held.items():
                try:
                    self.store.beat(token, job_ids)
                except Exception:
                    log.warning(
                        "could not renew the claims of %d jobs", len(job_ids), exc_info=True
                    )
