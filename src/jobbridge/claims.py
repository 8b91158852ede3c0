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
        self._held: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, token: str, job_ids: Sequence[str]) -> Iterator[None]:
        """Keep these claims alive for as long as the block runs."""
        with self._lock:
            self._held[token] = list(job_ids)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._beat, name="jobbridge-claims", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(token, None)

    def _beat(self) -> None:
        while True:
            with self._lock:
                self._wake.wait(self.interval)
                held = dict(self._held)
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
