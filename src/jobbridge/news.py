"""Waiting on backends that tell which of their jobs may have ended, so that a caller
waiting for jobs asks about those at once instead of at its next polling tick."""

from __future__ import annotations

import select
import time
from collections.abc import Iterable

from jobbridge.backends.base import Backend

__all__ = ["News"]

FLOOR = 0.02
"""The shortest pause between two queries that news brought: a stream of endings is
answered by a few queries, each about the jobs that ended since the last."""


class News:
    def __init__(self, backends: Iterable[Backend]) -> None:
        self._feeds: dict[int, Backend] = {}
        for backend in backends:
            fd = backend.news()
            if fd is not None:
                self._feeds[fd] = backend
        self._last = float("-inf")

    def __bool__(self) -> bool:
        return bool(self._feeds)

    def wait(self, timeout: float) -> list[str]:
        """Block until some backend has news or ``timeout`` seconds pass; the ids of the
        jobs the news were about."""
        pause = self._last + FLOOR - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, timeout))
            timeout -= pause
        ready, _, _ = select.select(list(self._feeds), [], [], max(timeout, 0.0))
        told = [job_id for fd in ready for job_id in self._feeds[fd].read_news()]
        if told:
            self._last = time.monotonic()
        return told
