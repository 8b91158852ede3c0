"""Finding what a submission with an unknown outcome created: the jobs the scheduler's queue
and accounting show carrying jobbridge's tags (see ``marks``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from jobbridge.backends.base import Located
from jobbridge.backends.batch.core import BatchCore
from jobbridge.backends.batch.marks import split_located
from jobbridge.errors import BackendError
from jobbridge.job import Job
from jobbridge.transport.base import CommandResult

__all__ = ["LOCATE_SLACK", "Locating"]

log = logging.getLogger(__name__)

LOCATE_SLACK = timedelta(minutes=5)
"""Clocks of the store's host and the scheduler's may differ this much."""


class Locating(BatchCore):
    """``locate``: the native jobs carrying the tags of jobs whose submission is uncertain."""

    def locate(self, jobs: Sequence[Job]) -> Located:
        """One queue listing and, where the scheduler keeps one, one accounting listing of
        the jobs carrying these jobs' tags. Absence is certain only if both answered."""
        if not jobs:
            return Located({}, complete=True)
        tags = sorted({self.tag(job) for job in jobs})
        env = self.status_environment()
        listing = self._run(self.locate_queue_command(tags), env=env, check=False, idempotent=True)
        natives = self._located(listing, self.parse_located)
        complete = True
        since = min(job.created for job in jobs) - LOCATE_SLACK
        command = self.locate_accounting_command(tags, since) if self.options.accounting else None
        if command is not None:
            try:
                answer = self._run(command, env=env, check=False, idempotent=True)
                accounted = self._located(answer, self.parse_located_accounting)
            except BackendError as error:
                log.warning("%s: accounting could not be searched: %s", self.name, error)
                accounted, complete = {}, False
            for tag, ids in accounted.items():
                natives[tag] = list(dict.fromkeys([*natives.get(tag, []), *ids]))
        found = {}
        for job in jobs:
            located = natives.get(self.tag(job), [])
            ids = [native for entry in located for native in self.located_ids(entry, job)]
            if ids:
                found[job.id] = ids
        return Located(found, complete=complete)

    def located_ids(self, entry: str, job: Job) -> list[str]:
        """The native ids of ``job`` that one id ``parse_located`` found under its tag
        stands for: a member's submission of its own is that member's only."""
        native, alone = split_located(entry)
        if job.array_index is None:
            return [native] if alone is None else []
        if alone is not None and alone != job.array_index:
            return []
        return self.member_ids(native, [job])

    def _located(
        self, result: CommandResult, parse: Callable[[str], dict[str, list[str]]]
    ) -> dict[str, list[str]]:
        if result.returncode != 0 and not self.empty_answer_is_fine(result):
            raise BackendError(
                f"{result.argv[0]} failed ({result.returncode}): {result.stderr.strip()}",
                retryable=True,
            )
        try:
            return parse(result.stdout)
        except (ValueError, IndexError, KeyError) as error:
            raise BackendError(
                f"{self.scheduler}: unreadable answer from {result.argv[0]}: {error}",
                retryable=True,
            ) from error
